"""DRoP (Vysogorets, Ahuja, Kempe, ICLR 2025): distributionally robust pruning and active
learning, the seed's workflow.

Per iteration t = 1..I (target sizes interpolated linearly, the last exactly the final one):
1. train ``num_inits`` query models (seeds differ) on the current samples, without
   augmentation; score every sample with each final query model as DRoP's released code does
   (:mod:`d2scale.vision.scoring`: EL2N, full-model GraNd, MC-dropout uncertainty) or take
   its training dynamics; average the scores and the per-class validation recall at the
   epoch of best validation accuracy;
2. per-class quotas (:mod:`d2scale.vision.quotas`): ``none``, ``uniform`` or ``drop``;
3. ``dp`` keeps, within each class's quota, the samples the scorer prefers; ``al`` acquires,
   within quotas over the unlabelled pool, samples from it (never one already labelled).
Then the final model trains on the result (DRoP's epoch rule, CDB-W if asked) and
``OUT/metrics.json`` records average, per-class and worst-class accuracy on the reported
test half, the quotas, the kept ids and timings. Query runs are cached by their inputs
(``query_cache``), so grids share them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.io import save_json, save_npy
from d2scale.params import budget_for, check_option
from d2scale.vision import runs, scoring
from d2scale.vision.coresets import (
    CoresetParams,
    remove_mislabeled,
    resolve_mis_ratio,
    select_coreset,
)
from d2scale.vision.models import build_model, has_dropout
from d2scale.vision.params import AUTO_NUM_INITS, NUM_INITS, VISION, vfield
from d2scale.vision.quotas import class_quotas, empty_class_warning, estimate_recall
from d2scale.vision.registry import AL_SCORERS, DP_SCORERS, SCORER_ALIASES, SCORERS
from d2scale.vision.train import (
    GROUP_KEYS,
    cdbw_key,
    load_model,
    pruned_epochs,
    run_signature,
    train,
)

# the query-model array (d2scale.vision.scoring) that fills a scorer's slot, per strategy;
# active learning never looks at the labels of the unlabelled pool
MODEL_SCORES = {
    "dp": {"el2n": "final_el2n", "grand": "grand_full"},
    "al": {
        "el2n": "el2n_predicted",
        "grand": "grand_predicted",
        "entropy": "mc_entropy",
        "margin": "mc_margin",
        "variation_ratio": "mc_variation_ratio",
        "bald": "mc_bald",
    },
}
_MC_SCORERS = ", ".join(k for k, v in MODEL_SCORES["al"].items() if v.startswith("mc_"))
# DRoP auto-config: query models for these train 10% of the epochs (the seed's Random query
# runs its default 16 of VGG-16's 160); the others need full training dynamics
SHORT_QUERY = ("random", "el2n", "grand", "el2n-early", "grand-early")
QUERY_SEED_STRIDE = 7919  # query model i of iteration t trains with seed + 7919·(1 + i + 10·t)


@dataclass
class PruneParams:
    """Everything that determines a DRoP run (see ``d2scale vision prune --help``)."""

    strategy: str  # "dp" (prune) or "al" (acquire)
    final_frac: float
    init_frac: float | None = None  # al: initial labelled fraction (default F / (I + 1))
    scorer: str = vfield("scorer")
    quoter: str = vfield("prune_quoter")
    num_inits: int | None = vfield("num_inits")  # None: --auto-config's value, else NUM_INITS
    iterations: int = vfield("prune_iterations")
    cdbw_final: bool = False
    cdbw_query: bool = False
    query_epochs: int | None = vfield("query_epochs")
    recall_smoothing: str = vfield("recall_smoothing")  # laplace: (hits + 1) / (n + 2); none
    seed: int = vfield("seed")
    select: dict = field(default_factory=dict)  # CoresetParams keywords (d2: n_neighbors, …)
    auto_config: bool = False  # DRoP's --auto_config: num_inits per AUTO_NUM_INITS
    dropout: float = vfield("dropout")  # dropout before the last layer of query and final models
    mc_passes: int = vfield("mc_passes")

    def validate(self) -> PruneParams:
        check_option(VISION["strategy"], self.strategy)
        if self.quoter == "auto":  # the seed's "Auto" means no quotas
            self.quoter = "none"
        check_option(VISION["quoter"], self.quoter)
        self.scorer = SCORER_ALIASES.get(self.scorer.lower(), self.scorer.lower())
        allowed = AL_SCORERS if self.strategy == "al" else DP_SCORERS
        if self.scorer not in allowed:
            raise D2ScaleError(
                f"--scorer for --strategy {self.strategy} must be one of {', '.join(allowed)}; "
                f"got {self.scorer!r}."
            )
        estimate_recall([], [], self.recall_smoothing)
        check_option(VISION["final_frac"], self.final_frac)
        if self.num_inits is None:
            self.num_inits = (self.auto_config and auto_num_inits(self)) or NUM_INITS
        for key in ("num_inits", "prune_iterations", "mc_passes", "query_epochs", "seed",
                    "dropout"):  # fmt: skip
            check_option(VISION[key], getattr(self, VISION[key].name))
        mc = MODEL_SCORES[self.strategy].get(self.scorer, "").startswith("mc_")
        if not mc and self.mc_passes != VISION["mc_passes"].default:
            raise D2ScaleError(
                f"--mc-passes applies to the MC-dropout scorers of --strategy al ({_MC_SCORERS}); "
                f"--strategy {self.strategy} --scorer {self.scorer} takes no passes."
            )
        if self.strategy == "dp" and self.init_frac not in (None, 1.0):
            raise D2ScaleError("--init-frac applies to --strategy al (dp starts from all data).")
        if self.strategy == "al":
            if self.init_frac is None:
                self.init_frac = self.final_frac / (self.iterations + 1)
            if not 0 < self.init_frac < self.final_frac:
                raise D2ScaleError(
                    f"--init-frac must be in (0, --final-frac = {self.final_frac}); "
                    f"got {self.init_frac}."
                )
        return self


def auto_num_inits(params: PruneParams) -> int | None:
    """Query models per selection under DRoP's released auto-config (pruning only; None where
    it leaves the user's value)."""
    return AUTO_NUM_INITS.get(params.scorer) if params.strategy == "dp" else None


def target_sizes(params: PruneParams, n: int) -> list[int]:
    """Sample counts after each iteration: linear in the fraction, ending at the final one."""
    start = 1.0 if params.strategy == "dp" else params.init_frac
    fracs = [start + (params.final_frac - start) * t / params.iterations
             for t in range(1, params.iterations + 1)]  # fmt: skip
    sizes = [budget_for(f, n) for f in fracs]
    sizes[-1] = budget_for(params.final_frac, n)
    return sizes


def initial_labelled(n: int, init_frac: float, seed: int) -> np.ndarray:
    """AL: the seeded random initial labelled set (sorted ids)."""
    size = max(1, budget_for(init_frac, n))
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def run_prune(data, model: str, recipe, params: PruneParams, out: str, *, progress=print,
              bars: bool = False, query_cache: str | None = None,
              extra: dict | None = None) -> dict:  # fmt: skip
    """The DRoP workflow; writes ``out/metrics.json`` (and ``kept.npy``) and returns metrics;
    ``extra`` entries (e.g. the device request, warnings) are recorded in the metrics."""
    params.validate()
    n, targets = data.size("train"), data.targets("train")
    sizes = target_sizes(params, n)
    if sizes[-1] == 0:  # before any query model is trained
        raise D2ScaleError(f"--final-frac {params.final_frac} keeps no sample of {n:,}.")
    extra = {**(extra or {}), **_mc_check(data, model, params)}
    bars = progress if bars else None  # training reports batches through ``progress``
    t0 = time.perf_counter()
    cache = query_cache or os.path.join(out, "query")
    kept = (
        np.arange(n)
        if params.strategy == "dp"
        else initial_labelled(n, params.init_frac, params.seed)
    )
    history, timings = [], {"query": 0.0, "select": 0.0}
    for t, size in enumerate(sizes):
        progress(f"iteration {t + 1}/{params.iterations}: {len(kept):,} → {size:,} samples")
        t1 = time.perf_counter()
        query = _query(data, model, recipe, params, kept, t, cache, bars)
        t2 = time.perf_counter()
        step = _prune_step if params.strategy == "dp" else _acquire_step
        new, info = step(params, query, kept, size, targets, data.num_classes, t)
        for w in info["warnings"]:  # the coreset's (a class left out without quotas)
            progress(w)
        warning = _warn_empty_classes(info, params, progress)
        info["warnings"] += [warning] if warning else []
        if params.strategy == "al":
            assert not np.intersect1d(new, kept).size  # never re-acquire
            new = np.union1d(kept, new)
        kept = new
        timings["query"] += t2 - t1
        timings["select"] += time.perf_counter() - t2
        history.append({"iteration": t + 1, "size": int(size), **info})
    return _final(data, model, recipe, params, kept, history, timings, out, t0, bars, progress,
                  extra)  # fmt: skip


def _mc_check(data, model: str, params: PruneParams) -> dict:
    """Uncertainty scorers: whether the model has dropout to sample (recorded); BALD refuses a
    model without, before any training."""
    key = MODEL_SCORES[params.strategy].get(params.scorer, "")
    if not key.startswith("mc_"):
        return {}
    size = getattr(data, "image_size", 32)
    net = build_model(model, data.num_classes, data.in_channels, size, params.dropout)
    mc = has_dropout(net)
    if params.scorer == "bald" and not mc:
        raise D2ScaleError(
            f"--scorer bald needs a model with dropout ({model} has none): give --dropout P "
            "(e.g. 0.3), or choose entropy, margin or variation_ratio."
        )
    return {"mc_dropout": mc, "mc_passes": params.mc_passes if mc else 1}


# ============================================================================ query models


@dataclass
class _Query:
    """Averaged query-model outputs (None when the scorer and quoter need no model)."""

    scores: dict[str, np.ndarray] | None
    features: np.ndarray | None
    recall: np.ndarray | None
    runs: list[str]


def query_recipe(recipe, params: PruneParams, kept_fraction: float):
    """Query models: 10% of the epochs for random, EL2N and GraNd (DRoP auto-config; a recipe
    may set ``short_query_epochs``), else all of them, then DRoP's epoch rule for the fraction
    of data they see."""
    short = min(recipe.short_query_epochs or 0, recipe.epochs) or max(1, round(0.1 * recipe.epochs))
    epochs = params.query_epochs or (short if params.scorer in SHORT_QUERY else recipe.epochs)
    return replace(recipe, epochs=pruned_epochs(epochs, kept_fraction), iterations=None)


def trains_query_models(params: PruneParams) -> bool:
    """False when nothing needs a query model: random scores, no DRoP quotas, no AUM cut."""
    mis = params.select.get("mis_ratio", "auto")
    aum = params.strategy == "dp" and resolve_mis_ratio(mis, "random", params.final_frac) > 0
    return not (params.scorer == "random" and params.quoter != "drop" and not aum)


def refuse_unread_query_flags(params: PruneParams, given: list[str]) -> None:
    """Refuse query-model flags (``given``: as spelt) for a run that trains no query model."""
    if given and not trains_query_models(params):
        raise D2ScaleError(
            f"{given[0]} sets the query models, but --scorer {params.scorer} --quoter "
            f"{params.quoter} trains none (no scores, recalls or AUM cut needed); leave it out."
        )


def _query(data, model, recipe, params, kept, t, cache, bars) -> _Query:
    if not trains_query_models(params):
        return _Query(None, None, None, [])  # no scores, recalls or AUM needed
    n = data.size("train")
    qr = query_recipe(recipe, params, len(kept) / n)
    indices = None if len(kept) == n else kept
    scores, recalls, dirs, features = [], [], [], None
    for i in range(params.num_inits):
        seed = params.seed + QUERY_SEED_STRIDE * (1 + i + 10 * t)
        cdbw = cdbw_key(params.cdbw_query, params.recall_smoothing)
        sig = run_signature(data, model, qr, indices, seed, False, cdbw, True, params.dropout)
        qdir = os.path.join(cache, sig[:20])
        net = None
        if not runs.is_finished(qdir):
            res = train(data, model, qr, indices=indices, seed=seed, augment=False,
                        cdbw=params.cdbw_query, recall_smoothing=params.recall_smoothing,
                        dynamics=True, dropout=params.dropout, out=qdir, progress=bars,
                        desc=f"query {i + 1}/{params.num_inits}")  # fmt: skip
            runs.save_run(qdir, res)
            net = res.model
        if bars:
            bars(f"query models: {i + 1}/{params.num_inits} models")
        s, features = runs.load_run(qdir)
        s |= model_scores(data, model, params, qdir, net, seed)
        scores.append(s)
        m = runs.read_metrics(qdir)
        recalls.append(estimate_recall(m["val_recall_at_best"], m["val_class_counts"],
                                       params.recall_smoothing))  # fmt: skip
        dirs.append(qdir)
    mean = {k: np.mean([s[k] for s in scores], axis=0) for k in scores[0] if k != "targets"}
    mean["targets"] = scores[0]["targets"]
    return _Query(mean, features, np.mean(recalls, axis=0), dirs)


def model_scores(data, model: str, params: PruneParams, qdir: str, net, seed: int) -> dict:
    """The query-model array the scorer ranks by (:data:`MODEL_SCORES`), computed from the
    trained model ``net`` (or its checkpoint in ``qdir``) once and cached beside the run."""
    key = MODEL_SCORES[params.strategy].get(params.scorer)
    if key is None or key == "final_el2n":  # none, or logged by every query run already
        return {}
    name = f"{key}-p{params.mc_passes}" if key.startswith("mc_") else key
    path = os.path.join(qdir, f"{name}.npy")
    if not os.path.isfile(path):
        if net is None:
            net = load_model(os.path.join(qdir, "checkpoint.pt"), data, model, params.dropout)
        save_npy(path, _compute_score(key, net, data, params, seed))
    return {key: np.load(path)}


def _compute_score(key: str, net, data, params: PruneParams, seed: int) -> np.ndarray:
    if key.startswith("mc_"):
        return scoring.uncertainty_scores(net, data, key[3:], params.mc_passes, seed)
    labels = "true" if params.strategy == "dp" else "predicted"
    if key.startswith("grand"):
        return scoring.grand_scores(net, data, labels)
    return scoring.el2n_scores(net, data, labels)


def ranked_scores(params: PruneParams, query: _Query, targets: np.ndarray) -> dict:
    """The scores the coreset code ranks by: the scorer's slot filled with its query-model
    array; active learning sees no training dynamics of unlabelled samples (only the
    final model's entropy, for d2)."""
    if query.scores is None:
        return {"targets": targets}
    if params.strategy == "dp":
        scores = dict(query.scores)
    else:
        scores = {"targets": targets, "entropy": query.scores["entropy"]}
    source = MODEL_SCORES[params.strategy].get(params.scorer)
    if source is not None:
        scores[SCORERS[params.scorer][1]] = query.scores[source]
    return scores


# ============================================================================ selection steps


def _coreset_params(params: PruneParams, n: int, size: int, t: int, al: bool) -> CoresetParams:
    method, score = SCORERS[params.scorer]
    kw = dict(params.select)
    if al:
        kw["mis_ratio"] = 0.0
        score = "entropy" if params.scorer == "d2" else score  # no dynamics on unlabelled data
    cp = CoresetParams(method=method, fraction=max(size, 1) / n, seed=params.seed + t, **kw)
    if score:
        cp.score = score
    return cp.validate()


def _prune_step(params, query, kept, size, targets, n_classes, t):
    n = len(targets)
    cp = _coreset_params(params, n, size, t, al=False)
    scores = ranked_scores(params, query, targets)
    features = query.features if query.features is not None else np.zeros((n, 1), np.float32)
    cands, removed = remove_mislabeled(kept, scores, int(cp.mis_ratio * len(kept)))
    cp.mis_ratio = 0.0
    counts = np.bincount(targets[cands], minlength=n_classes)
    quotas = class_quotas(params.quoter, counts, query.recall, size, params.seed + t)
    coreset = select_coreset(cp, scores, features, class_budget=quotas, budget=size, pool=cands)
    return coreset.indices, _step_info(query, quotas, removed, counts, coreset)


def _acquire_step(params, query, kept, size, targets, n_classes, t):
    n = len(targets)
    cp = _coreset_params(params, n, size, t, al=True)
    pool = np.setdiff1d(np.arange(n), kept)
    scores = ranked_scores(params, query, targets)
    features = query.features if query.features is not None else np.zeros((n, 1), np.float32)
    counts = np.bincount(targets[pool], minlength=n_classes)
    quotas = class_quotas(params.quoter, counts, query.recall, size - len(kept), params.seed + t)
    coreset = select_coreset(cp, scores, features, class_budget=quotas, budget=size - len(kept),
                             pool=pool, anchors=kept)  # fmt: skip
    return coreset.indices, _step_info(query, quotas, 0, counts, coreset)


def _warn_empty_classes(info: dict, params: PruneParams, progress) -> str | None:
    """Quotas that give a class with samples none of them (DRoP: a measured validation
    recall of 1.0): say so in one line; the line, for metrics.json."""
    if info["quotas"] is None:
        return None
    hint = ""
    if params.quoter == "drop" and params.recall_smoothing == "none":
        hint = "; --recall-smoothing laplace avoids it"
    verb = "keep no" if params.strategy == "dp" else "acquire no new"
    recalls = info.get("val_recall") if params.quoter == "drop" else None
    warning = empty_class_warning(info["quotas"], info["class_counts"], recalls, hint, verb)
    if warning:
        progress(warning)
    return warning


def _step_info(query: _Query, quotas, removed: int, counts, coreset) -> dict:
    return {
        "warnings": list(coreset.info.get("warnings", [])),
        "class_counts": counts.tolist(),
        "quotas": None if quotas is None else quotas.tolist(),
        "val_recall": None if query.recall is None else [round(float(r), 6) for r in query.recall],
        "n_removed_by_aum": removed,
        "query_runs": query.runs,
    }


# ============================================================================ final model


def _final(data, model, recipe, params, kept, history, timings, out, t0, bars, progress, extra):
    n = data.size("train")
    final = replace(recipe, epochs=pruned_epochs(recipe.epochs, len(kept) / n), iterations=None)
    progress(f"final model on {len(kept):,} samples ({final.epochs} epochs)")
    t1 = time.perf_counter()
    result = train(data, model, final, indices=None if len(kept) == n else kept,
                   seed=params.seed, cdbw=params.cdbw_final,
                   recall_smoothing=params.recall_smoothing, dropout=params.dropout,
                   out=os.path.join(out, "final"),
                   progress=bars, desc="final")  # fmt: skip
    timings["final"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    m = result.metrics
    counts = np.bincount(data.targets("train")[kept], minlength=data.num_classes)
    metrics = {
        "strategy": params.strategy,
        "scorer": params.scorer,
        "quoter": params.quoter,
        "cdbw_final": params.cdbw_final,
        "final_frac": params.final_frac,
        "n_train": n,
        "n_kept": len(kept),
        "test_accuracy": m["test_accuracy"],
        "worst_class_accuracy": m["worst_class_accuracy"],
        "per_class_accuracy": m["per_class_accuracy"],
        **{key: m[key] for key in GROUP_KEYS if key in m},
        "kept_per_class": counts.tolist(),
        "quotas": [h["quotas"] for h in history],
        "warnings": [w for h in history for w in h["warnings"]],
        "iterations": history,
        "final_model": m,
        "params": dict(vars(params)),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "kept_indices": kept.tolist(),
        **extra,
    }
    save_npy(os.path.join(out, "kept.npy"), kept.astype(np.int64))
    save_json(os.path.join(out, "metrics.json"), metrics)
    return metrics
