"""Per-class quotas: how many samples each class keeps (SPEC §3, DRoP's Algorithm 1).

``drop``: the retained density of class k is proportional to its validation error
``1 − r_k`` and capped at 1; the excess of saturated classes is redistributed to the others
in the same proportions until none remains, so counts are ∝ ``N_k·(1 − r_k)`` among
unsaturated classes. ``uniform``: every class keeps the same density. Fractional counts are
rounded down and the leftover slots go to randomly chosen classes (seeded), one each, among
those with a fractional part. ``Σ(1 − r_k) = 0`` falls back to uniform.
"""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.params import budget_for
from d2scale.vision.params import QUOTERS, RECALL_SMOOTHINGS

MAX_TOTAL = 2**53  # class sizes sum to at most this: quotas are computed in float64, exactly


def estimate_recall(recall, counts, smoothing: str = "none") -> np.ndarray:
    """Per-class recall as measured (``none``, the published rule) or Laplace-smoothed,
    ``(hits + 1) / (n + 2)``: a finite validation set that gets every sample of a class right
    does not prove a zero error, and DRoP (or CDB-W) would give that class no samples (or no
    loss weight) at all."""
    recall = np.asarray(recall, dtype=np.float64)
    if smoothing == "none":
        return recall
    if smoothing not in RECALL_SMOOTHINGS:
        raise D2ScaleError(
            f"--recall-smoothing must be {' or '.join(RECALL_SMOOTHINGS)}; got {smoothing!r}."
        )
    n = np.asarray(counts, dtype=np.float64)
    return (recall * n + 1) / (n + 2)


def drop_quotas(counts, recalls, budget: int, seed: int = 0) -> np.ndarray:
    """DRoP quotas (int64 per class) summing to ``budget``."""
    counts, budget = _checked_counts(counts, budget)
    err = 1.0 - np.asarray(recalls, dtype=np.float64)
    if err.shape != counts.shape or np.any(~np.isfinite(err)) or err.min() < 0 or err.max() > 1:
        raise D2ScaleError(f"give {len(counts)} recalls in [0, 1], one per class.")
    if err.sum() == 0:
        return uniform_quotas(counts, budget, seed)
    density = np.zeros(len(counts))
    saturated = counts == 0
    remaining = float(budget)
    while True:
        active = ~saturated & (err > 0)
        if not active.any():  # every erring class is full: the rest keep a uniform density
            rest = ~saturated
            density[rest] = remaining / counts[rest].sum() if rest.any() else 0.0
            break
        density[active] = remaining * err[active] / np.sum(counts[active] * err[active])
        full = active & (density >= 1)
        if not full.any():
            break
        density[full] = 1.0
        saturated |= full
        remaining -= counts[full].sum()
    return _round(counts * np.minimum(density, 1.0), counts, budget, seed)


def uniform_quotas(counts, budget: int, seed: int = 0) -> np.ndarray:
    """Every class keeps the same density ``budget / N``."""
    counts, budget = _checked_counts(counts, budget)
    return _round(counts * (budget / max(counts.sum(), 1)), counts, budget, seed)


def class_quotas(quoter: str, counts, recalls, budget: int, seed: int = 0) -> np.ndarray | None:
    """The quotas of ``quoter`` (``none`` → None: no per-class constraint)."""
    if quoter not in QUOTERS:
        raise D2ScaleError(f"--quoter must be one of {', '.join(QUOTERS)}; got {quoter!r}.")
    if quoter == "none":
        return None
    if quoter == "uniform":
        return uniform_quotas(counts, budget, seed)
    if recalls is None:
        raise D2ScaleError("the drop quoter needs per-class validation recalls (--recalls).")
    return drop_quotas(counts, recalls, budget, seed)


def quotas_report(counts, recalls, fraction: float, quoter: str, seed: int = 0) -> dict:
    """What ``d2scale vision quotas`` prints: budget ``int(fraction·N)`` and the quotas."""
    if not 0 < fraction <= 1:
        raise D2ScaleError(f"--fraction must be in (0, 1]; got {fraction}.")
    if sum(int(c) for c in counts) > MAX_TOTAL:
        raise D2ScaleError(f"--counts must sum to at most 2^53 = {MAX_TOTAL:,} samples.")
    counts = np.asarray(counts, dtype=np.int64)
    budget = budget_for(fraction, int(counts.sum()))
    quotas = class_quotas(quoter, counts, recalls, budget, seed)
    report = {"quoter": quoter, "fraction": fraction, "budget": budget, "counts": counts.tolist()}
    if recalls is not None:
        report["recalls"] = [float(r) for r in recalls]
    if quotas is not None:
        report["quotas"] = quotas.tolist()
        report["densities"] = [
            round(q / c, 6) if c else 0.0 for q, c in zip(quotas, counts, strict=True)
        ]
        report["saturated"] = [int(c) for c in np.flatnonzero((quotas == counts) & (counts > 0))]
        warning = empty_class_warning(quotas, counts, recalls)
        if warning:
            report["warnings"] = [warning]
    return report


def emptied_classes(quotas, counts) -> list[int]:
    """Classes that have samples but a quota of 0."""
    q, c = np.asarray(quotas), np.asarray(counts)
    return [int(k) for k in np.flatnonzero((q == 0) & (c > 0))]


def empty_class_warning(
    quotas, counts, recalls=None, hint: str = "", verb: str = "keep no"
) -> str | None:
    """One warning line when the quotas keep no sample of a class that has some (the model
    will never see it), naming why: a measured recall of 1.0 (zero error) or a share that
    rounds to 0. None when every class with samples keeps some."""
    empty = emptied_classes(quotas, counts)
    if not empty:
        return None
    perfect = recalls is not None and all(float(recalls[k]) >= 1.0 for k in empty)
    why = "validation recall 1.0 means zero error" if perfect else "their share rounds to 0"
    return f"warning: the quotas {verb} samples of class(es) {empty} ({why}){hint}"


def _checked_counts(counts, budget: int) -> tuple[np.ndarray, int]:
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0 or counts.dtype.kind not in "iu" or counts.min() < 0:
        raise D2ScaleError("class counts must be a non-empty list of integers ≥ 0.")
    if not 0 <= budget <= counts.sum():
        raise D2ScaleError(f"cannot keep {budget} of {int(counts.sum())} samples.")
    return counts.astype(np.int64), int(budget)


def _round(raw: np.ndarray, counts: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Round down; give the leftover slots, one each, to random classes with a fraction."""
    quotas = np.minimum(np.floor(raw + 1e-9).astype(np.int64), counts)
    leftover = budget - int(quotas.sum())
    if leftover > 0:
        frac = np.flatnonzero((raw - quotas > 1e-9) & (quotas < counts))
        if len(frac) < leftover:  # float noise only: any class with room
            frac = np.flatnonzero(quotas < counts)
        lucky = np.random.default_rng(seed).choice(frac, leftover, replace=False)
        quotas[lucky] += 1
    assert quotas.sum() == budget and np.all(quotas <= counts)
    return quotas
