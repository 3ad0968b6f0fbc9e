"""CLIP-score filtering (DataComp's ``clip_score`` baselines): keep the highest image–text
cosine similarities, as a top fraction (a prefix of the order) or above a threshold."""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods._options import step_options
from d2scale.types import Ranking


def clip_score_order(scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Rows by score, highest first (ties → lower row); with ``threshold``, only the rows
    whose score is ≥ it, compared in the scores' own precision (float32 for DataComp's
    columns), as DataComp's ``df[key] >= threshold`` does.

    A fraction ``f`` of the pool is the first ``int(f·N)`` rows. DataComp turns a fraction
    into the threshold ``sorted_desc[int(f·N)]`` and keeps every row ≥ it, which keeps one
    more row (more on ties) than the fraction; pass that threshold to reproduce it exactly.
    """
    s = np.asarray(scores)
    if s.ndim != 1:
        raise D2ScaleError(f"CLIP scores must be a 1-D array; got shape {s.shape}.")
    if not np.issubdtype(s.dtype, np.floating):
        try:
            s = s.astype(np.float64)
        except (TypeError, ValueError):
            raise D2ScaleError(f"CLIP scores must be numbers; found {s.dtype} values.") from None
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise D2ScaleError(f"CLIP score of row {int(bad[0])} is null, NaN or inf.")
    order = np.argsort(-s, kind="stable")
    if threshold is not None:
        order = order[s[order] >= s.dtype.type(threshold)]
    return order.astype(np.int64)


DESCRIPTION = "highest CLIP score first; threshold=T keeps only scores ≥ T (DataComp)"


def options(given: dict, params) -> dict:
    """``threshold`` (default none) and ``column`` (default ``--score-column``'s)."""
    spec = {"threshold": (float, None), "column": (str, params.resolved_score_column)}
    return step_options("clip-score", given, spec)


def rank(inputs, params) -> Ranking:
    """Registry adapter: the raw score column (``--score-column``, default the model's CLIP
    score; ``column=NAME`` picks another), unshifted, so thresholds mean what DataComp's do."""
    opts = options(inputs.options, params)
    scores = inputs.column(opts["column"])
    order = clip_score_order(scores, opts["threshold"])
    info = {"column": opts["column"], "threshold": opts["threshold"], "passed": len(order)}
    return Ranking(order, {"clip_score": np.asarray(scores, dtype=np.float64)}, info)
