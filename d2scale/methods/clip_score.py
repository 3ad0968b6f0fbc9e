"""CLIP-score filtering (DataComp's ``clip_score`` baselines): keep the highest image–text
cosine similarities, as a top fraction (a prefix of the order) or above a threshold."""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError


def clip_score_order(scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Rows by score, highest first (ties → lower row); with ``threshold``, only the rows
    whose score is ≥ it (DataComp's ``df[key] >= threshold``).

    A fraction ``f`` of the pool is the first ``int(f·N)`` rows. DataComp turns a fraction
    into the threshold ``sorted_desc[int(f·N)]`` and keeps every row ≥ it, which keeps one
    more row (more on ties) than the fraction; pass that threshold to reproduce it exactly.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise D2ScaleError(f"CLIP scores must be a 1-D array; got shape {s.shape}.")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise D2ScaleError(f"CLIP score of row {int(bad[0])} is NaN or inf.")
    order = np.argsort(-s, kind="stable")
    if threshold is not None:
        order = order[s[order] >= threshold]
    return order.astype(np.int64)
