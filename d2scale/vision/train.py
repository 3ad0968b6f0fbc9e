"""Train one classifier, logging training dynamics: the whole trainer, top to bottom.

Reading order: hyperparameters (the recipes) → schedule → one epoch → evaluation →
checkpoints → :func:`train`, which ties them together. Data come from
:mod:`d2scale.vision.data` (tensors on the device, a coreset is an index array), models from
:mod:`d2scale.vision.models`, scores from :mod:`d2scale.vision.dynamics`.

Two recipe families (SPEC §3):
- ``d2``: the D2 / CCS protocol. Full-data runs train ``epochs`` epochs; coreset runs train a
  fixed number of optimiser steps (``iterations``, the seed's 40k on CIFAR), whatever the
  coreset's size. SGD + Nesterov, cosine decay to ``min_lr``.
- ``drop``: DRoP's ``--auto_config``. Step decay ×0.2 at fixed fractions of the run; a model
  trained on a fraction ``d`` of the data runs ``int((0.5 + 0.5 d)·E / d)`` epochs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from d2scale.errors import D2ScaleError
from d2scale.io import atomic_path
from d2scale.params import check_option
from d2scale.vision.defaults import CIFAR_ITERATIONS
from d2scale.vision.dynamics import DynamicsLog, el2n_of, entropy_of, grand_of
from d2scale.vision.meter import meter
from d2scale.vision.models import build_model
from d2scale.vision.params import VISION
from d2scale.vision.quotas import estimate_recall

# ============================================================================ hyperparameters


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule of one training run."""

    epochs: int  # full-data epochs (coreset runs: see ``iterations``)
    batch_size: int  # samples per SGD step
    lr: float  # peak learning rate
    weight_decay: float  # L2 penalty on every parameter
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"  # "cosine" (to min_lr) or "multistep" (×drop_factor at milestones)
    min_lr: float = 1e-4  # cosine: final learning rate
    milestones: tuple[float, ...] = ()  # multistep: drop points, as fractions of the run
    drop_factor: float = 0.2  # multistep: learning-rate multiplier at each milestone
    iterations: int | None = None  # coreset runs: fixed number of SGD steps
    short_query_epochs: int | None = None  # DRoP random/EL2N/GraNd query models (None: 10%)


CIFAR_D2 = Recipe(
    epochs=200, batch_size=256, lr=0.1, weight_decay=5e-4, iterations=CIFAR_ITERATIONS
)
RECIPES: dict[tuple[str, str], Recipe] = {
    # D2 / CCS (SPEC §3): ResNet-18, 200 epochs full data, 40k steps on coresets
    ("d2", "cifar10"): CIFAR_D2,
    ("d2", "cifar100"): CIFAR_D2,
    # ImageNet: the usual 90-epoch ResNet recipe; coresets get 60 full-data epochs of steps
    ("d2", "imagenet"): Recipe(90, 256, 0.1, 1e-4, iterations=300_000),
    # TinyImageNet: the CIFAR recipe (no D2 / CCS recipe of its own in the seeds)
    ("d2", "tinyimagenet"): CIFAR_D2,
    # Waterbirds (4,795 training images, from scratch at 224 px; our choice, no seed recipe):
    # 100 epochs of 38 steps; coresets get as many steps
    ("d2", "waterbirds"): Recipe(100, 128, 0.1, 5e-4, iterations=100 * 38),
    # digit sets, scaled for a 2-core CPU: coresets get as many steps as the full-data run
    ("d2", "digits"): Recipe(30, 64, 0.05, 5e-4, min_lr=1e-3, iterations=30 * 17),
    ("d2", "mnist5k"): Recipe(10, 128, 0.05, 5e-4, min_lr=1e-3, iterations=10 * 24),
    # DRoP --auto_config (SPEC §3): VGG-16-BN on CIFAR-10; its ResNet-18 / ResNet-50 configs
    ("drop", "cifar10"): Recipe(
        160, 128, 0.1, 1e-4, nesterov=False, schedule="multistep", milestones=(0.5, 0.75)
    ),
    ("drop", "cifar100"): Recipe(
        160, 128, 0.1, 5e-4, nesterov=False, schedule="multistep", milestones=(0.5, 0.75)
    ),
    # DRoP's ResNet-18 config on TinyImageNet: lr 0.2, batch 200, 200 epochs, ×0.2 at 100, 150
    ("drop", "tinyimagenet"): Recipe(
        200, 200, 0.2, 1e-4, nesterov=False, schedule="multistep", milestones=(0.5, 0.75)
    ),
    # Waterbirds: the CIFAR DRoP schedule over 100 epochs (our choice, no seed config)
    ("drop", "waterbirds"): Recipe(
        100, 128, 0.1, 5e-4, nesterov=False, schedule="multistep", milestones=(0.5, 0.75)
    ),
    ("drop", "imagenet"): Recipe(
        90, 512, 0.4, 1e-4, nesterov=False, schedule="multistep", milestones=(1 / 3, 2 / 3, 8 / 9)
    ),
    ("drop", "digits"): Recipe(
        30, 64, 0.05, 5e-4, nesterov=False, schedule="multistep", milestones=(0.5, 0.75)
    ),
    # mnist5k: 10% of 10 epochs leaves the query CNN at ~32% test accuracy (quotas from
    # noise); 5 epochs, as the seed's 16 of 160 leave its VGG close to its final accuracy
    ("drop", "mnist5k"): Recipe(
        10,
        128,
        0.05,
        5e-4,
        nesterov=False,
        schedule="multistep",
        milestones=(0.5, 0.75),
        short_query_epochs=5,
    ),
}
# model-specific DRoP configs (ResNet-18: lr 0.2, batch 200, 200 epochs); VGG-19-BN on
# CIFAR-100 (lr 0.1, wd 5e-4, batch 128, 160 epochs, ×0.2 at 80, 120) is the CIFAR-100 recipe
MODEL_RECIPES = {
    ("drop", "cifar10", "resnet18"): Recipe(
        200, 200, 0.2, 1e-4, nesterov=False, schedule="multistep", milestones=(0.4, 0.6)
    ),
}
EVAL_BATCH = 1024  # samples per evaluation batch
CHECKPOINT_SECONDS = 30.0  # save the epoch checkpoint at most this often (and after the last)


def recipe_for(dataset: str, model: str, family: str = "d2", **overrides) -> Recipe:
    """The recipe of ``family`` for ``dataset``/``model``; non-None ``overrides`` win."""
    base = MODEL_RECIPES.get((family, dataset, model)) or RECIPES.get((family, dataset))
    if base is None:
        raise D2ScaleError(f"no {family} recipe for dataset {dataset!r}.")
    changes = {k: v for k, v in overrides.items() if v is not None}
    for k in ("epochs", "batch_size", "iterations", "lr"):
        if k in changes:
            check_option(VISION[k], changes[k])
    return replace(base, **changes)


def pruned_epochs(epochs: int, kept_fraction: float) -> int:
    """DRoP's epoch rule for a model trained on a fraction ``d`` of the data."""
    return max(1, int((0.5 + 0.5 * kept_fraction) * epochs / kept_fraction))


# ============================================================================ schedule


def lr_at(r: Recipe, step: int, total: int) -> float:
    """Learning rate of SGD step ``step`` of ``total``."""
    t = step / max(total, 1)
    if r.schedule == "cosine":
        return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * t))
    return r.lr * r.drop_factor ** sum(t >= m for m in r.milestones)


# ============================================================================ one epoch


def train_epoch(run: _Run, epoch: int) -> float:
    """One pass over the run's samples (stopping at the step budget); mean training loss."""
    model, opt = run.model, run.opt
    model.train()
    total_loss, batches = 0.0, 0
    weight = run.class_weights if run.cdbw else None
    seed = run.seed * 1_000_003 + epoch  # every epoch's shuffle and augmentation, reproducibly
    for x, y, idx in run.data.batches(
        "train", run.indices, run.recipe.batch_size, train=True, augment=run.augment, seed=seed
    ):
        if run.step >= run.total_steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(run.recipe, run.step, run.total_steps)
        with run.autocast():
            logits, h = model(x, features=True)
            loss = F.cross_entropy(logits.float(), y, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.step += 1
        run.meter(run.step)
        if run.dynamics is not None:
            run.dynamics.update(epoch, idx, logits.detach(), y, h.detach())
        total_loss += float(loss.detach())
        batches += 1
    return total_loss / max(batches, 1)


# ============================================================================ evaluation


@torch.no_grad()
def evaluate(
    model, data, split: str, indices=None, *, autocast=None, keep: bool = False, progress=None
) -> dict:
    """Accuracy and per-class recall on ``split`` (and per-group accuracy where the data
    have groups: Waterbirds); with ``keep`` also every sample's penultimate features,
    prediction entropy, EL2N and last-layer GraNd of this model (numpy, in ``indices`` order;
    NaN for an image that could not be read). ``progress``: rows done, when it takes long."""
    model.eval()
    expected = np.arange(data.size(split)) if indices is None else np.asarray(indices)
    rows = meter(progress, f"evaluate {split}", len(expected), "rows")
    done = 0
    k = data.num_classes
    hits = torch.zeros(k, device=data.device)
    counts = torch.zeros(k, device=data.device)
    groups = _Groups(data, split)
    kept: dict[str, list] = {"features": [], "entropy": [], "el2n": [], "grand": [], "ids": []}
    for x, y, idx in data.batches(split, indices, EVAL_BATCH, train=False):
        with autocast() if autocast else contextlib.nullcontext():
            logits, h = model(x, features=True)
        done += len(y)
        rows(done)
        correct = (logits.argmax(1) == y).float()
        hits += torch.bincount(y, weights=correct, minlength=k)
        counts += torch.bincount(y, minlength=k).float()
        groups.add(idx, correct)
        if keep:
            kept["ids"].append(idx.cpu().numpy())
            err = el2n_of(F.softmax(logits.float(), dim=1), y)
            for name, v in (
                ("features", h.float()),
                ("entropy", entropy_of(logits)),
                ("el2n", err),
                ("grand", grand_of(err, h)),
            ):
                kept[name].append(v.cpu().numpy())
    recall = (hits / counts.clamp(min=1)).cpu().numpy()
    present = counts.cpu().numpy() > 0
    out = {
        "accuracy": float(hits.sum() / counts.sum().clamp(min=1)),
        "per_class_accuracy": [
            float(v) if p else None for v, p in zip(recall, present, strict=True)
        ],
        "worst_class_accuracy": float(recall[present].min()) if present.any() else 0.0,
        "per_class_count": [int(c) for c in counts.cpu().numpy()],
        **groups.result(),
    }
    if keep and kept["ids"]:
        ids = np.concatenate(kept.pop("ids"))
        out.update({k: _in_order(np.concatenate(v), ids, expected) for k, v in kept.items()})
    return out


def _in_order(values: np.ndarray, ids: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``values`` of samples ``ids`` placed in ``expected`` order (float32; NaN rows for
    samples that never came: unreadable images)."""
    if len(ids) == len(expected) and np.array_equal(ids, expected):
        return values.astype(np.float32)
    position = np.full(int(max(expected.max(), ids.max())) + 1, -1, dtype=np.int64)
    position[expected] = np.arange(len(expected))
    out = np.full((len(expected), *values.shape[1:]), np.nan, dtype=np.float32)
    out[position[ids]] = values
    return out


class _Groups:
    """Per-group accuracy of one evaluation pass (a no-op for data without groups)."""

    def __init__(self, data, split: str):
        groups = getattr(data, "groups", None)
        self.names = data.group_names if groups else None
        if self.names:
            self.of = torch.as_tensor(groups[split], device=data.device)
            self.hits = torch.zeros(len(self.names), device=data.device)
            self.counts = torch.zeros(len(self.names), device=data.device)

    def add(self, idx: torch.Tensor, correct: torch.Tensor) -> None:
        if self.names:
            g = self.of[idx]
            self.hits += torch.bincount(g, weights=correct, minlength=len(self.names))
            self.counts += torch.bincount(g, minlength=len(self.names)).float()

    def result(self) -> dict:
        if not self.names:
            return {}
        counts = self.counts.cpu().numpy()
        acc = (self.hits / self.counts.clamp(min=1)).cpu().numpy()
        present = counts > 0
        return {
            "group_names": list(self.names),
            "per_group_accuracy": [
                float(a) if p else None for a, p in zip(acc, present, strict=True)
            ],
            "worst_group_accuracy": float(acc[present].min()) if present.any() else 0.0,
            "per_group_count": [int(c) for c in counts],
        }


# ============================================================================ checkpoints


def save_checkpoint(run: _Run, epoch: int) -> None:
    """Everything needed to continue after ``epoch``, written atomically."""
    if run.ckpt_path is None:
        return
    state = {
        "signature": run.signature,
        "epoch": epoch,
        "step": run.step,
        "model": run.model.state_dict(),
        "opt": run.opt.state_dict(),
        "dynamics": run.dynamics.state_dict() if run.dynamics is not None else None,
        "class_weights": run.class_weights,
        "history": run.history,
    }
    with atomic_path(run.ckpt_path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(run: _Run) -> int:
    """Restore the last finished epoch from ``run.ckpt_path``; the next epoch to run."""
    if run.ckpt_path is None or not os.path.exists(run.ckpt_path):
        return 0
    try:
        state = torch.load(run.ckpt_path, map_location=run.data.device, weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise D2ScaleError(f"cannot read checkpoint {run.ckpt_path}: {e}") from None
    if state.get("signature") != run.signature:
        raise D2ScaleError(
            f"{run.ckpt_path} belongs to a run with other data or settings; "
            "use another --out or delete the checkpoint."
        )
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["opt"])
    if run.dynamics is not None:
        run.dynamics.load_state_dict(state["dynamics"])
    run.step, run.class_weights, run.history = (
        state["step"],
        state["class_weights"],
        state["history"],
    )
    return int(state["epoch"]) + 1


def load_model(path: str, data, model_name: str, dropout: float = 0.0):
    """The model of a finished run's checkpoint, in eval mode (to score a cached query run)."""
    if not os.path.isfile(path):
        raise D2ScaleError(f"{path} is missing: cannot score this cached run; delete its folder.")
    try:
        state = torch.load(path, map_location=data.device, weights_only=False)
    except Exception as e:  # a truncated or foreign file (as load_checkpoint)
        raise D2ScaleError(f"cannot read the model in {path}: {e}") from None
    size = getattr(data, "image_size", 32)
    model = build_model(model_name, data.num_classes, data.in_channels, size, dropout)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise D2ScaleError(f"cannot read the model in {path}: {e}") from None
    return model.to(data.device).eval()


# ============================================================================ the run


class _Run:
    """State of one training run (model, optimiser, step counter, logs)."""

    def __init__(
        self, data, model_name, recipe, indices, seed, augment, cdbw, dynamics, out, dropout=0.0
    ):
        self.data, self.recipe, self.seed, self.dropout = data, recipe, seed, dropout
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.augment, self.cdbw = augment, cdbw
        n_used = data.size("train") if indices is None else len(self.indices)
        if n_used == 0:
            raise D2ScaleError("the training subset is empty; keep at least one sample.")
        steps_per_epoch = math.ceil(n_used / recipe.batch_size)
        self.total_steps = recipe.iterations or recipe.epochs * steps_per_epoch
        self.epochs = math.ceil(self.total_steps / steps_per_epoch)
        # validate every epoch when the curve is used (best-epoch recall, CDB-W); otherwise
        # about once per full-data epoch's worth of samples (a 10% coreset: every 10 epochs)
        full = data.size("train")
        self.eval_every = 1 if (cdbw or dynamics) else max(1, round(full / n_used))
        torch.manual_seed(seed)
        size = getattr(data, "image_size", 32)
        self.model = build_model(model_name, data.num_classes, data.in_channels, size, dropout)
        self.model.to(data.device)
        self.opt = torch.optim.SGD(
            self.model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
            weight_decay=recipe.weight_decay,
        )
        self.dynamics = (
            DynamicsLog(data.size("train"), self.epochs, data.device) if dynamics else None
        )
        self.class_weights = torch.ones(data.num_classes, device=data.device)
        self.step, self.history = 0, []
        self.progress, self.meter = None, meter(None, "", 0, "")  # set by train()
        self.ckpt_path = os.path.join(out, "checkpoint.pt") if out else None
        self.signature = run_signature(
            data, model_name, recipe, self.indices, seed, augment, cdbw, dynamics, dropout
        )

    def autocast(self):
        """bfloat16 autocast on CUDA (no loss scaling needed), nothing elsewhere."""
        cuda = self.data.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)


def cdbw_key(cdbw: bool, recall_smoothing: str):
    """How CDB-W enters a run signature (plain bool unless the recalls are smoothed)."""
    return f"cdbw-{recall_smoothing}" if cdbw and recall_smoothing != "none" else cdbw


# Bumped when the same inputs would train differently, so old checkpoints and query caches
# are not reused (2: unaugmented runs shuffle their batches).
TRAINING_VERSION = 2


def run_signature(
    data, model_name, recipe, indices, seed, augment, cdbw, dynamics, dropout: float = 0.0
) -> str:
    """A hash of everything that determines a training run (checkpoints, query caches); a
    dropout rate enters only when > 0, so runs without dropout keep their signatures."""
    h = hashlib.sha256()
    facts = [
        TRAINING_VERSION,
        data.name,
        data.size("train"),
        model_name,
        asdict(recipe),
        seed,
        augment,
        cdbw,
        dynamics,
    ]
    if dropout:
        facts.append({"dropout": dropout})
    h.update(json.dumps(facts, sort_keys=True, default=str).encode())
    if indices is not None:
        h.update(np.ascontiguousarray(indices).tobytes())
    return h.hexdigest()


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the model, metrics (JSON-ready), per-class validation recall
    at the best validation epoch, and (full logging) scores and features per train sample."""

    model: torch.nn.Module
    metrics: dict
    val_recall_at_best: np.ndarray
    scores: dict[str, np.ndarray] | None = None
    features: np.ndarray | None = None


def train(
    data,
    model_name: str,
    recipe: Recipe,
    *,
    indices: np.ndarray | None = None,
    seed: int = 0,
    augment: bool = True,
    cdbw: bool = False,
    dynamics: bool = False,
    recall_smoothing: str = "none",
    dropout: float = 0.0,
    out: str | None = None,
    progress=None,
    desc: str = "train",
) -> TrainResult:
    """Train ``model_name`` on ``data``'s train split (or the samples ``indices``).

    Every epoch ends with a validation pass (best-epoch recall for DRoP; CDB-W weights
    ``1 − recall`` for the next epoch when ``cdbw``; coreset runs without either validate
    about once per full-data epoch's worth of samples); with ``out``, ``out/checkpoint.pt`` is
    saved at most every ``CHECKPOINT_SECONDS`` and after the last epoch, and a rerun resumes
    from it. ``dynamics`` logs the SPEC §3 scores of
    every presented sample and extracts features of every training sample at the end.
    ``dropout`` > 0 puts dropout before the last layer (:func:`~d2scale.vision.models.build_model`).
    ``progress`` (a callable such as :class:`d2scale.progress.Progress`, or None) hears
    ``"<desc>: done/total batches"`` at most every few seconds, and the passes over held-out
    or training rows that take long.
    """
    t0 = time.perf_counter()
    estimate_recall([], [], recall_smoothing)  # a bad name fails before any training
    run = _Run(data, model_name, recipe, indices, seed, augment, cdbw, dynamics, out, dropout)
    run.recall_smoothing = recall_smoothing
    run.signature = run_signature(data, model_name, recipe, run.indices, seed, augment,
                                  cdbw_key(cdbw, recall_smoothing), dynamics, dropout)  # fmt: skip
    start = load_checkpoint(run)
    run.progress = progress or None
    run.meter = meter(progress, desc, run.total_steps, "batches")
    last_save = time.monotonic()
    for epoch in range(start, run.epochs):
        loss = train_epoch(run, epoch)
        if (epoch + 1) % run.eval_every and epoch != run.epochs - 1:
            continue
        val = evaluate(run.model, data, "val", autocast=run.autocast, progress=progress)
        recall = np.array([v or 0.0 for v in val["per_class_accuracy"]])
        run.history.append({"epoch": epoch, "loss": loss, "val_accuracy": val["accuracy"],
                            "val_recall": recall.tolist()})  # fmt: skip
        if cdbw:  # CDB-W: weights of the next epoch from this epoch's validation recall
            r = estimate_recall(recall, val["per_class_count"], recall_smoothing)
            w = torch.tensor(1.0 - r, dtype=torch.float32, device=data.device)
            run.class_weights = w if float(w.sum()) > 0 else torch.ones_like(w)
        if epoch == run.epochs - 1 or time.monotonic() - last_save > CHECKPOINT_SECONDS:
            save_checkpoint(run, epoch)  # tiny coresets run hundreds of short epochs
            last_save = time.monotonic()
    run.meter(run.total_steps)
    return _finish(run, model_name, time.perf_counter() - t0)


def evaluate_counts(data, split: str) -> list[int]:
    """Samples per class in ``split``."""
    return np.bincount(data.targets(split), minlength=data.num_classes).tolist()


def _finish(run: _Run, model_name: str, seconds: float) -> TrainResult:
    data = run.data
    test = evaluate(run.model, data, "test", autocast=run.autocast, progress=run.progress)
    best = max(run.history, key=lambda h: h["val_accuracy"]) if run.history else None
    metrics = {
        "dataset": data.name,
        "model": model_name,
        "seed": run.seed,
        "n_train": data.size("train") if run.indices is None else len(run.indices),
        "epochs": run.epochs,
        "steps": run.step,
        "recipe": asdict(run.recipe),
        "cdbw": run.cdbw,
        "recall_smoothing": run.recall_smoothing if run.cdbw else None,
        "dropout": run.dropout,
        "test_accuracy": test["accuracy"],
        "worst_class_accuracy": test["worst_class_accuracy"],
        "per_class_accuracy": test["per_class_accuracy"],
        "val_accuracy": run.history[-1]["val_accuracy"] if run.history else None,
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "val_recall_at_best": best["val_recall"] if best else None,
        "val_class_counts": evaluate_counts(data, "val"),
        "device": str(data.device),
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        **{key: test[key] for key in GROUP_KEYS if key in test},
    }
    recall_best = np.array(best["val_recall"]) if best else np.zeros(data.num_classes)
    result = TrainResult(run.model, metrics, recall_best)
    if run.dynamics is not None:
        full = evaluate(
            run.model, data, "train", autocast=run.autocast, keep=True, progress=run.progress
        )
        result.features = full["features"].astype(np.float32)
        result.scores = run.dynamics.result(full["entropy"], data.targets("train"))
        # the final model's own EL2N and GraNd (eval mode), for samples never trained on (AL)
        result.scores["final_el2n"], result.scores["final_grand"] = full["el2n"], full["grand"]
    unreadable = sorted(getattr(data, "unreadable", ()))
    if unreadable:
        metrics["unreadable_images"] = {"count": len(unreadable), "first": unreadable[:10]}
    return result


GROUP_KEYS = ("worst_group_accuracy", "per_group_accuracy", "group_names", "per_group_count")


def unreadable_warning(data) -> str | None:
    """One warning line when images were skipped as unreadable (None otherwise)."""
    bad = sorted(getattr(data, "unreadable", ()))
    if not bad:
        return None
    return (
        f"warning: skipped {len(bad):,} unreadable image(s) (first: {bad[0]}); they are "
        "absent from training and evaluation (metrics.json: unreadable_images)"
    )
