"""Coreset selection from a full-data run: random, top-k, D2, CCS, Moderate, k-center.

Every method is a *picker*: ``pick(pool, budget) -> ids`` over a pool of training-sample
ids. :func:`select_coreset` wraps the pickers the way the D2 / CCS code does (SPEC §3):

1. remove ``int(mis_ratio·N)`` samples with the lowest accumulated margin (AUM), globally;
2. global mode: one pick of ``int(fraction·N)`` over what remains; class mode: split that
   budget across classes (:func:`class_budgets`, or given per-class quotas such as DRoP's)
   and pick within each class — a class no larger than its budget is taken whole.

D2 builds one exact kNN graph per class with the project's own graph code and runs the
project's message passing (the engine of ``d2scale mp``) on it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.params import budget_for, check_option
from d2scale.vision.dynamics import difficulty, score_name
from d2scale.vision.meter import meter
from d2scale.vision.params import AUTO_MIS_RATIO, VISION, vfield
from d2scale.vision.registry import CORESET_METHODS, METHODS

KCENTER_DENSE_MAX = 8192  # k-center: precompute all distances up to this many points (512 MB)


@dataclass
class CoresetParams:
    """Everything that determines a coreset (see ``d2scale vision select --help``)."""

    method: str
    fraction: float
    score: str = vfield("score")  # training-dynamics score (topk, d2, ccs)
    mis_ratio: float | str = vfield("mis_ratio")  # share of N removed first by lowest AUM
    coreset_mode: str | None = vfield("coreset_mode")  # None: class for d2 and kcenter
    n_neighbors: int = vfield("n_neighbors")  # D2: k of each class graph
    gamma: float = vfield("gamma")  # D2: reverse kernel width
    gamma_forward: float = vfield("gamma_forward")  # D2: forward kernel width
    mode: str = vfield("mode")  # D2: forward combination
    sampling: str = vfield("sampling")  # D2: reverse update
    strata: int = vfield("strata")  # CCS: equal-width score strata
    seed: int = vfield("seed")

    def validate(self) -> CoresetParams:
        if self.method not in METHODS:
            raise D2ScaleError(
                f"--method must be one of {', '.join(METHODS)}; got {self.method!r}."
            )
        check_option(VISION["fraction"], self.fraction)
        self.score = score_name(self.score)
        self.mis_ratio = resolve_mis_ratio(self.mis_ratio, self.method, self.fraction)
        check_option(VISION["coreset_mode"], self.coreset_mode)
        if self.coreset_mode is None:
            self.coreset_mode = "class" if CORESET_METHODS[self.method].per_class else "global"
        for name in ("seed", "n_neighbors", "strata", "gamma", "gamma_forward", "mode", "sampling"):
            check_option(VISION[name], getattr(self, name))
        return self


def resolve_mis_ratio(value: float | str, method: str, fraction: float) -> float:
    """``auto``: for D2 and CCS the CCS paper's CIFAR-10 hard-cutoff rates by the fraction
    kept (:data:`~d2scale.vision.params.AUTO_MIS_RATIO`); 0 for other methods."""
    if value == "auto":
        if not CORESET_METHODS[method].removes_mislabeled:
            return 0.0
        return next(ratio for kept, ratio in AUTO_MIS_RATIO if fraction >= kept)
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise D2ScaleError(f"--mis-ratio must be a number or auto; got {value!r}.") from None
    if not 0 <= ratio <= 1 - fraction + 1e-12:
        raise D2ScaleError(
            f"--mis-ratio must be in [0, 1 − fraction] = [0, {1 - fraction:.3g}]; got {ratio}."
        )
    return ratio


@dataclass
class Coreset:
    """Selected training-sample ids (sorted int64) and how they were chosen."""

    indices: np.ndarray
    info: dict


def select_coreset(
    params: CoresetParams,
    scores: dict[str, np.ndarray],
    features: np.ndarray,
    *,
    class_budget: np.ndarray | None = None,
    budget: int | None = None,
    pool: np.ndarray | None = None,
    anchors: np.ndarray | None = None,
    progress=None,
) -> Coreset:
    """Select ``int(fraction·N)`` samples (N = all training samples) per ``params``.

    ``scores`` holds the training dynamics (``targets`` among them) and ``features`` one row
    per sample. ``class_budget`` (per-class counts, e.g. DRoP quotas) forces class mode with
    those budgets; ``budget`` replaces ``int(fraction·N)``; ``pool`` restricts the candidates
    (default: every sample); k-center continues from the centres ``anchors`` (active
    learning: the samples already labelled). ``progress`` (a callable) hears the classes
    picked and k-center's centres when that takes long.
    """
    params.validate()
    with _torch_threads_kept():
        return _select(params, scores, features, class_budget, budget, pool, anchors, progress)


@contextlib.contextmanager
def _torch_threads_kept():
    """faiss and numba's OpenMP set the process-wide OpenMP thread count, which torch then
    uses too: training after a selection ran with all cores, and under load ~20× slower.
    Restore torch's own setting afterwards."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _select(params, scores, features, class_budget, budget, pool, anchors, progress) -> Coreset:
    t0 = time.perf_counter()
    targets = checked_targets(scores["targets"])
    n = len(targets)
    if features.shape[0] != n:
        raise D2ScaleError(f"features have {features.shape[0]} rows but there are {n} samples.")
    check_finite(params, scores, features)
    if class_budget is not None:
        budget = int(np.sum(class_budget))
    elif budget is None:
        budget = budget_for(params.fraction, n)
    if budget == 0 and pool is None and class_budget is None:
        raise D2ScaleError(f"--fraction {params.fraction} keeps no sample of {n:,}.")
    cands = np.arange(n) if pool is None else np.sort(np.asarray(pool, dtype=np.int64))
    cands, removed = remove_mislabeled(cands, scores, int(params.mis_ratio * n))
    if budget > len(cands):
        raise D2ScaleError(f"cannot keep {budget} of the {len(cands)} candidate samples.")
    picker = _Picker(params, scores, features, targets, anchors, progress)
    info = {"params": asdict(params), "n": n, "budget": budget, "n_removed_by_aum": removed}
    if params.coreset_mode == "class" or class_budget is not None:
        chosen, class_budget = _per_class(picker, cands, targets, budget, class_budget)
        info["class_budgets"] = [int(b) for b in class_budget]
    else:
        chosen = picker(cands, budget, None)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    chosen = np.sort(chosen.astype(np.int64))
    assert len(chosen) == budget and len(np.unique(chosen)) == budget
    if class_budget is None and anchors is None:  # quotas warn for themselves (DRoP)
        missing = np.setdiff1d(np.unique(targets[cands]), np.unique(targets[chosen]))
        if len(missing):
            info["warnings"] = [
                f"warning: the coreset has no samples of class(es) {missing.tolist()}, "
                "which the candidates have (the model will never see them)"
            ]
    return Coreset(chosen, info)


def checked_targets(targets) -> np.ndarray:
    """Class labels as int64, refused unless integers ≥ 0 (a negative label would silently
    get no budget)."""
    raw = np.asarray(targets)
    if raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):
        raise D2ScaleError(f"class labels must be a 1-D integer array; found {raw.dtype}.")
    if raw.size and raw.min() < 0:
        raise D2ScaleError(f"class labels must be ≥ 0; found {int(raw.min())}.")
    return raw.astype(np.int64)


def check_finite(params: CoresetParams, scores: dict[str, np.ndarray], features) -> None:
    """Refuse NaN or infinite values in what ``params``' method reads: its score, the AUM
    that ``mis_ratio`` removes by, the features (d2, moderate, kcenter)."""
    method = CORESET_METHODS[params.method]
    used = [params.score] if method.reads_score else []
    if params.mis_ratio > 0:
        used.append("accumulated_margin")
    for name in used:
        if name not in scores:
            raise D2ScaleError(f"--method {params.method} needs the score {name!r}; none given.")
        bad = int(np.count_nonzero(~np.isfinite(np.asarray(scores[name], dtype=np.float64))))
        if bad:
            raise D2ScaleError(f"the score {name!r} has {bad:,} NaN or infinite values.")
    if method.reads_features:
        rows = 1 << 16  # a block at a time: no boolean copy of a large feature matrix
        bad = sum(int(np.count_nonzero(~np.isfinite(features[i : i + rows]).all(axis=1)))
                  for i in range(0, len(features), rows))  # fmt: skip
        if bad:
            raise D2ScaleError(f"{bad:,} feature rows hold NaN or infinite values.")


def _per_class(picker, cands, targets, budget, class_budget) -> tuple[np.ndarray, np.ndarray]:
    """Class mode: split the budget (or take the given per-class budgets), pick per class."""
    n_classes = int(targets.max()) + 1 if class_budget is None else len(class_budget)
    per_class = group_by_class(cands, targets, n_classes)
    counts = np.array([len(p) for p in per_class])
    if class_budget is None:
        class_budget = class_budgets(counts, budget)
    elif np.any(np.asarray(class_budget) > counts) or targets.max() >= n_classes:
        raise D2ScaleError("a class budget exceeds the number of candidates of its class.")
    step = meter(picker.progress, f"{picker.p.method} per class", n_classes, "classes")
    picks = []
    for c, (p, b) in enumerate(zip(per_class, class_budget, strict=True)):
        picks.append(picker(p, int(b), c))
        step(c + 1)
    return (np.concatenate(picks) if picks else np.zeros(0, np.int64)), class_budget


def group_by_class(ids: np.ndarray, targets: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """``ids`` split by class (each part in ``ids`` order), in one stable sort."""
    order = np.argsort(targets[ids], kind="stable")
    bounds = np.searchsorted(targets[ids][order], np.arange(n_classes + 1))
    return [ids[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def remove_mislabeled(
    cands: np.ndarray, scores: dict[str, np.ndarray], n_remove: int
) -> tuple[np.ndarray, int]:
    """Drop the ``n_remove`` candidates with the lowest AUM (ties → lower id first)."""
    if n_remove <= 0:
        return cands, 0
    aum = np.asarray(scores["accumulated_margin"], dtype=np.float64)[cands]
    drop = np.lexsort((cands, aum))[:n_remove]
    return np.sort(np.delete(cands, drop)), int(min(n_remove, len(cands)))


def class_budgets(counts: np.ndarray, budget: int) -> np.ndarray:
    """Split ``budget`` across classes: classes too small for an even share are taken whole
    (smallest first), the rest share evenly, and the remainder adds one to each of the largest
    classes (ties → lower class id)."""
    counts = np.asarray(counts, dtype=np.int64)
    if budget > counts.sum():
        raise D2ScaleError(f"cannot keep {budget} of {int(counts.sum())} samples.")
    out = np.zeros(len(counts), dtype=np.int64)
    left = sorted(range(len(counts)), key=lambda c: (counts[c], c))
    remaining = budget
    while left:
        share = remaining // len(left)
        small = [c for c in left if counts[c] <= share]
        if not small:
            break
        for c in small:
            out[c] = counts[c]
            remaining -= counts[c]
        left = [c for c in left if counts[c] > share]
    if left:
        share, extra = divmod(remaining, len(left))
        out[left] = share
        out[sorted(left, key=lambda c: (-counts[c], c))[:extra]] += 1
    return out


# ============================================================================ pickers


class _Picker:
    """Dispatches ``(pool, budget, class)`` to the chosen method's picker."""

    def __init__(
        self, params: CoresetParams, scores, features, targets, anchors=None, progress=None
    ):
        self.p, self.scores, self.features, self.targets = params, scores, features, targets
        self.anchors = np.zeros(0, np.int64) if anchors is None else np.asarray(anchors)
        self.progress = progress

    def __call__(self, pool: np.ndarray, budget: int, cls: int | None) -> np.ndarray:
        if budget >= len(pool):
            return pool  # a class no larger than its budget is taken whole
        if budget == 0:
            return pool[:0]
        return PICKERS[self.p.method](self, pool, budget, cls)

    def kcenter(self, pool: np.ndarray, budget: int, cls: int | None) -> np.ndarray:
        a = self.anchors if cls is None else self.anchors[self.targets[self.anchors] == cls]
        step = meter(self.progress if cls is None else None, "k-center", budget, "centres")
        if len(a) == 0:
            return pool[kcenter_greedy(self.features[pool], budget, step=step)]
        x = self.features[np.concatenate([a, pool])]
        picks = kcenter_greedy(x, budget, initial=np.arange(len(a)), step=step)
        return pool[picks - len(a)]

    def d2(self, pool: np.ndarray, budget: int) -> np.ndarray:
        from d2scale.d2 import d2_order

        p = self.p
        s = difficulty(self.scores, p.score)[pool]
        if s.min() < 0:  # −AUM: D2 expects non-negative scores; shift to start at 0
            s = s - s.min()
        knn = knn_graph(self.features[pool], p.n_neighbors)
        result = d2_order(
            knn,
            s,
            gamma=p.gamma,
            gamma_forward=p.gamma_forward,
            mode=p.mode,
            sampling=p.sampling,
            budget=budget,
        )
        return result.order[:budget]


def knn_graph(x: np.ndarray, k: int):
    """The exact kNN graph (SPEC §1: k nearest *other* points, Euclidean, ties → lower id) of
    the rows of ``x``, from the project's exact search (sgemm scan, float64-certified).

    The one place the vision code builds graphs: repoint here to change the kNN backend.
    """
    from d2scale.graph import drop_self
    from d2scale.graph import topk as exact_topk
    from d2scale.types import KnnGraph

    x = np.ascontiguousarray(x, dtype=np.float32)
    keep = min(k + 1, len(x))
    pos, d2 = exact_topk(x, x, [(0, len(x))], keep)
    nbr, d2 = drop_self(pos, d2, np.arange(len(x)), min(k, len(x) - 1))
    if nbr.shape[1] < k:  # fewer than k other points: pad as the KnnGraph contract says
        pad = k - nbr.shape[1]
        nbr = np.pad(nbr, ((0, 0), (0, pad)), constant_values=-1)
        d2 = np.pad(d2, ((0, 0), (0, pad)), constant_values=np.inf)
    return KnnGraph(neighbors=nbr.astype(np.int64), distances=np.sqrt(d2).astype(np.float32))


def topk(pool: np.ndarray, score: np.ndarray, budget: int) -> np.ndarray:
    """The ``budget`` pool members with the highest ``score`` (ties → lower id)."""
    order = np.lexsort((pool, -score[pool]))
    return pool[order[:budget]]


def stratified_sampling(
    score: np.ndarray, budget: int, strata: int, rng: np.random.Generator
) -> np.ndarray:
    """CCS: positions of ``budget`` samples drawn uniformly within ``strata`` equal-width
    score strata, the budget allocated from the smallest stratum up (each gets
    ``min(size, remaining // strata left)``)."""
    lo, hi = float(score.min()), float(score.max())
    if hi > lo:
        bins = np.minimum(((score - lo) / (hi - lo) * strata).astype(np.int64), strata - 1)
    else:
        bins = np.zeros(len(score), dtype=np.int64)
    sizes = np.bincount(bins, minlength=strata)
    take = np.zeros(strata, dtype=np.int64)
    remaining = budget
    for i, s in enumerate(np.argsort(sizes, kind="stable")):
        take[s] = min(sizes[s], remaining // (strata - i))
        remaining -= take[s]
    picks = [rng.permutation(np.flatnonzero(bins == s))[: take[s]] for s in range(strata)]
    return np.concatenate(picks)


def moderate(features: np.ndarray, labels: np.ndarray, budget: int) -> np.ndarray:
    """Moderate-DS: distance of each sample to its class's coordinate-wise median feature;
    positions of the ``budget`` samples around the median distance (both extremes dropped)."""
    dist = np.zeros(len(labels), dtype=np.float64)
    classes = np.unique(labels)
    for members in group_by_class(np.arange(len(labels)), np.searchsorted(classes, labels),
                                  len(classes)):  # fmt: skip
        x = features[members].astype(np.float64)
        med = np.median(np.ascontiguousarray(x.T), axis=1)  # rows are contiguous: fast partition
        dist[members] = np.linalg.norm(x - med, axis=1)
    order = np.lexsort((np.arange(len(dist)), dist))
    start = (len(dist) - budget) // 2
    return order[start : start + budget]


def kcenter_greedy(
    x: np.ndarray, budget: int, initial: np.ndarray | None = None, step=None
) -> np.ndarray:
    """k-center greedy: positions in ``x`` of ``budget`` new centres, each the point farthest
    from all centres so far (ties → lowest position). Without ``initial`` centres the first is
    the point nearest the mean. Squared distances in float64 from one matrix product: the
    whole distance matrix up to ``KCENTER_DENSE_MAX`` rows, else one row per pick."""
    x = np.asarray(x, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    dense = np.maximum(sq[:, None] - 2 * x @ x.T + sq, 0) if len(x) <= KCENTER_DENSE_MAX else None

    def dist_to(u: int) -> np.ndarray:
        return dense[u] if dense is not None else np.maximum(sq - 2 * x @ x[u] + sq[u], 0)

    chosen = np.zeros(len(x), dtype=bool)
    min_d = np.full(len(x), np.inf)
    picks: list[int] = []
    if initial is not None and len(initial):
        for u in np.asarray(initial):
            np.minimum(min_d, dist_to(int(u)), out=min_d)
        chosen[np.asarray(initial)] = True
    else:
        picks.append(int(np.argmin(((x - x.mean(0)) ** 2).sum(1))))
        chosen[picks[0]] = True
        min_d = dist_to(picks[0]).copy()
    while len(picks) < budget:
        u = int(np.argmax(np.where(chosen, -np.inf, min_d)))
        picks.append(u)
        if step is not None:
            step(len(picks))
        chosen[u] = True
        np.minimum(min_d, dist_to(u), out=min_d)
    return np.asarray(picks, dtype=np.int64)


def _rng(seed: int, cls: int | None) -> np.random.Generator:
    """One independent stream per class (class mode) or the seed's own (global mode)."""
    return np.random.default_rng(seed if cls is None else [seed, cls])


# Each method's picker: (picker state, pool of sample ids, budget, class or None) -> ids.
PICKERS = {
    "random": lambda s, pool, budget, cls: _rng(s.p.seed, cls).choice(pool, budget, replace=False),
    "topk": lambda s, pool, budget, cls: topk(pool, difficulty(s.scores, s.p.score), budget),
    "d2": lambda s, pool, budget, cls: pool[s.d2(pool, budget)],
    "ccs": lambda s, pool, budget, cls: pool[stratified_sampling(
        np.asarray(s.scores[s.p.score], dtype=np.float64)[pool], budget, s.p.strata,
        _rng(s.p.seed, cls))],
    "moderate": lambda s, pool, budget, cls: pool[moderate(s.features[pool], s.targets[pool],
                                                           budget)],
    "kcenter": lambda s, pool, budget, cls: s.kcenter(pool, budget, cls),
}  # fmt: skip
