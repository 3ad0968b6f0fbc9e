"""Reverse message passing (SPEC §1): the greedy pick order.

Exact greedy: repeat — ``u`` = argmax of ``g`` over unselected nodes (ties → lowest index);
select ``u``; ``g_v ← g_v − w_uv·g_u`` for every unselected ``v ∈ N(u)``, with
``w_uv = exp(−γr·d_uv)`` (``weighted``) or 1 (``absolute``). Scores may turn negative, and
then updates raise the neighbours: that is the published behaviour. The output is the
pick order, so every smaller budget is a prefix. Variants that change the result are
named options: ``buckets`` (:mod:`d2scale.bucketed`) and ``greedy="standby"``
(:mod:`d2scale.standby`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from d2scale._reverse_numba import greedy_kernel
from d2scale.errors import D2ScaleError
from d2scale.forward import kernel_weights, resolve_device
from d2scale.types import CsrGraph, KnnGraph

SAMPLINGS = ("weighted", "absolute")
GREEDIES = ("exact", "standby")


def reverse_weights(csr: CsrGraph, gamma: float, sampling: str = "weighted") -> np.ndarray:
    """Per-edge update weights, float64: ``exp(−γr·d)`` (weighted) or ones (absolute)."""
    if sampling not in SAMPLINGS:
        raise D2ScaleError(f"sampling must be one of {SAMPLINGS}; got {sampling!r}.")
    if sampling == "absolute":
        return np.ones(csr.n_edges, dtype=np.float64)
    return kernel_weights(csr.distances, gamma)


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


def reverse_order(
    csr: CsrGraph,
    forward: np.ndarray,
    *,
    gamma: float,
    budget: int | None = None,
    sampling: str = "weighted",
    device: str = "cpu",
    greedy: str = "exact",
    buckets: int | np.ndarray | None = None,
    knn: KnnGraph | None = None,
    client: Any = None,
) -> np.ndarray:
    """Pick order (int64, ``budget`` or N nodes) of the reverse pass from forward scores.

    ``greedy="standby"`` runs the DataComp script's heuristic on the directed ``knn``;
    ``buckets`` (a count of contiguous id ranges, or one label per node) runs the exact
    greedy on the graph without cross-bucket edges, bucket by bucket, as Dask tasks
    (``client``, else threads). Both are approximations of the exact default and CPU-only.
    """
    forward = np.ascontiguousarray(forward, dtype=np.float64)
    budget = checked_budget(budget, csr.n)
    if greedy not in GREEDIES:
        raise D2ScaleError(f"greedy must be one of {GREEDIES}; got {greedy!r}.")
    if forward.shape != (csr.n,) or not np.isfinite(forward).all():
        raise D2ScaleError(f"forward scores must be {csr.n} finite numbers (one per node).")
    device = resolve_device(device)
    if device == "cuda" and (greedy != "exact" or buckets is not None):
        raise D2ScaleError("the standby and bucketed variants run on the CPU: use device='cpu'.")
    if greedy == "standby":
        return _standby(knn, csr.n, forward, gamma, budget, sampling, buckets)
    weights = reverse_weights(csr, gamma, sampling)
    if buckets is not None:
        from d2scale.bucketed import bucket_labels, bucketed_order

        labels = bucket_labels(buckets, csr.n)
        return bucketed_order(csr, forward, weights, labels, budget, client=client)
    if device == "cuda":
        from d2scale._cuda import reverse_order_cuda

        return reverse_order_cuda(csr, forward, weights, budget)
    picks, _ = greedy_kernel(
        np.asarray(csr.indptr, dtype=np.int64),
        np.asarray(csr.indices, dtype=np.int32),
        weights,
        forward,
        np.zeros(csr.n, dtype=np.uint8),
        budget,
        False,
    )
    return picks


def checked_budget(budget: int | None, n: int) -> int:
    """``budget`` as an int in [0, n] (None → n), else a one-sentence error."""
    if budget is None:
        return n
    is_int = isinstance(budget, (int, np.integer)) and not isinstance(budget, bool)
    if not is_int or not 0 <= budget <= n:
        raise D2ScaleError(
            f"budget must be an integer in [0, {n}] (the number of nodes); got {budget!r}."
        )
    return int(budget)


def _standby(
    knn: KnnGraph | None,
    n: int,
    forward: np.ndarray,
    gamma: float,
    budget: int,
    sampling: str,
    buckets: Any,
) -> np.ndarray:
    if knn is None or knn.n != n:
        raise D2ScaleError("greedy='standby' needs the directed kNN graph (knn=) of these nodes.")
    if buckets is not None:
        raise D2ScaleError("greedy='standby' cannot be combined with buckets.")
    from d2scale.standby import standby_order

    return standby_order(knn, forward, gamma=gamma, budget=budget, sampling=sampling)
