"""The exact greedy of the reverse pass (SPEC §1) on the CPU, from scratch or from a state.

The compiled tournament tree is in :mod:`d2scale.d2._greedy`; these are its entry points.
"""

from __future__ import annotations

import numpy as np

from d2scale.d2._greedy import greedy_kernel
from d2scale.errors import D2ScaleError
from d2scale.types import CsrGraph


def exact_order(csr: CsrGraph, forward: np.ndarray, weights: np.ndarray, budget: int):
    """The first ``budget`` picks (int64) of the exact greedy from the forward scores."""
    picks, _ = greedy_kernel(
        np.asarray(csr.indptr, dtype=np.int64),
        np.asarray(csr.indices, dtype=np.int32),
        np.asarray(weights, dtype=np.float64),
        np.ascontiguousarray(forward, dtype=np.float64),
        np.zeros(csr.n, dtype=np.uint8),
        int(budget),
        False,
        False,
    )
    return picks


def greedy_continue(
    indptr: np.ndarray,
    indices: np.ndarray,
    weights: np.ndarray,
    values: np.ndarray,
    selected: np.ndarray,
    budget: int,
) -> np.ndarray:
    """Continue the exact greedy from a state; return the next ``min(budget, remaining)``
    picks (int64) in order.

    ``values`` (float64[N], current scores) and ``selected`` (bool or uint8[N]) are updated
    in place, so a caller (the GPU driver) can hand over a partial state and read it back.
    """
    n = indptr.shape[0] - 1
    if not (
        isinstance(values, np.ndarray)
        and values.dtype == np.float64
        and values.flags.c_contiguous
        and values.shape == (n,)
    ):
        raise D2ScaleError(f"values must be a C-contiguous float64 array of {n} scores.")
    if not (
        isinstance(selected, np.ndarray)
        and selected.dtype in (np.bool_, np.uint8)
        and selected.flags.c_contiguous
        and selected.shape == (n,)
    ):
        raise D2ScaleError(f"selected must be a C-contiguous bool or uint8 array of {n} flags.")
    if not np.isfinite(values[~selected.astype(bool)]).all():
        raise D2ScaleError("the values of unselected nodes must be finite (no NaN or inf).")
    picks, _ = greedy_kernel(
        np.asarray(indptr, dtype=np.int64),
        np.asarray(indices, dtype=np.int32),
        np.asarray(weights, dtype=np.float64),
        values,
        selected.view(np.uint8),
        int(budget),
        True,
    )
    return picks
