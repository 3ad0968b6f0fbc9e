"""Scores of one trained query model, as DRoP's released code computes them (eval mode, no
augmentation, every training sample):

- ``el2n``: ‖softmax − onehot(y)‖₂ with the true label (pruning) or the predicted one
  (active learning: the pool is unlabelled);
- ``grand``: the norm of the per-sample loss gradient over *all* the model's parameters,
  true label (pruning) or predicted one (active learning);
- ``entropy``, ``margin``, ``variation_ratio``, ``bald``: uncertainty of the mean softmax
  over ``passes`` MC-dropout passes (dropout sampled, BatchNorm in eval mode); a model
  without dropout gets one deterministic pass, and BALD, which measures the disagreement
  between passes, refuses it.

Every function returns float32 arrays in training-sample order; higher = harder / more
uncertain.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from d2scale.errors import D2ScaleError
from d2scale.vision.dynamics import el2n_of
from d2scale.vision.models import has_dropout

UNCERTAINTY = ("entropy", "margin", "variation_ratio", "bald")
SCORE_BATCH = 256  # samples per forward batch
GRAD_BYTES = 512 * 2**20  # per-sample gradients held at once (bytes)


def el2n_scores(model, data, labels: str) -> np.ndarray:
    """EL2N of every training sample under ``model`` (eval mode); ``labels`` is ``true`` or
    ``predicted``."""
    model.eval()
    out = []
    with torch.no_grad():
        for x, y, _ in data.batches("train", None, SCORE_BATCH, train=False):
            p = F.softmax(model(x).float(), dim=1)
            out.append(el2n_of(p, _labels(p, y, labels)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def grand_scores(model, data, labels: str) -> np.ndarray:
    """‖∇_θ CE(model(x), y)‖₂ over every parameter θ, per training sample (eval mode:
    BatchNorm uses its running statistics, dropout is off), computed with ``torch.func``."""
    from torch.func import functional_call, grad, vmap

    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, x, y):
        logits = functional_call(model, (p, buffers), (x[None],))
        return F.cross_entropy(logits.float(), y[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    n_params = sum(v.numel() for v in params.values())
    chunk = max(1, GRAD_BYTES // (4 * n_params))
    out = []
    for x, y, _ in data.batches("train", None, chunk, train=False):
        with torch.no_grad():
            y = _labels(model(x), y, labels)
        g = per_sample(params, x, y)
        sq = sum(v.float().pow(2).flatten(1).sum(1) for v in g.values())
        out.append(sq.sqrt().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def uncertainty_scores(model, data, name: str, passes: int, seed: int) -> np.ndarray:
    """``name`` (one of ``UNCERTAINTY``) from ``passes`` MC-dropout passes (one pass when the
    model has no dropout; BALD then refuses)."""
    if name not in UNCERTAINTY:
        raise D2ScaleError(f"unknown uncertainty score {name!r}: use {', '.join(UNCERTAINTY)}.")
    mc = has_dropout(model)
    if name == "bald" and not mc:
        raise D2ScaleError(
            "BALD needs a model with dropout (MC-dropout passes disagree only through it); "
            "give --dropout P (e.g. 0.3) or choose --scorer entropy, margin or variation_ratio."
        )
    probs = mc_probabilities(model, data, passes if mc else 1, seed)  # (n, passes, classes)
    mean = probs.mean(1)
    if name == "entropy":
        return _entropy(mean)
    if name == "variation_ratio":
        return (1 - mean.max(1)).astype(np.float32)
    if name == "margin":
        top2 = np.sort(mean, axis=1)[:, -2:]
        return (1 - (top2[:, 1] - top2[:, 0])).astype(np.float32)
    return (_entropy(mean) - _entropy(probs).mean(1)).astype(np.float32)  # bald


def mc_probabilities(model, data, passes: int, seed: int) -> np.ndarray:
    """Softmax of every training sample in each of ``passes`` passes, dropout sampled (seeded)
    and everything else in eval mode: float64 (n, passes, classes)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.train()
    devices = [data.device] if data.device.type == "cuda" else []
    out = []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for _ in range(passes):
                batches = data.batches("train", None, SCORE_BATCH, train=False)
                ps = [F.softmax(model(x).float(), dim=1).cpu().numpy() for x, _, _ in batches]
                out.append(np.concatenate(ps))
    finally:
        model.eval()
    return np.stack(out, axis=1).astype(np.float64)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)


def _labels(out: torch.Tensor, y: torch.Tensor, labels: str) -> torch.Tensor:
    if labels == "true":
        return y
    if labels == "predicted":
        return out.argmax(1)
    raise ValueError(labels)
