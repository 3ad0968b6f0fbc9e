"""Reverse message passing (SPEC §1): the greedy pick order.

Exact greedy: repeat — ``u`` = argmax of ``g`` over unselected nodes (ties → lowest index);
select ``u``; ``g_v ← g_v − w_uv·g_u`` for every unselected ``v ∈ N(u)``, with
``w_uv = exp(−γr·d_uv)`` (``weighted``) or 1 (``absolute``). Scores may turn negative, and
then updates raise the neighbours: that is the published behaviour. The output is the
pick order, so every smaller budget is a prefix. Variants that change the result are
named options, CPU-only: ``buckets`` (:mod:`d2scale.d2.bucketed`) and ``greedy="standby"``
(:mod:`d2scale.d2.standby`). This module only dispatches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from d2scale.backends import resolve_device
from d2scale.d2.exact import exact_order
from d2scale.d2.weights import reverse_weights
from d2scale.errors import D2ScaleError
from d2scale.params import check, check_budget
from d2scale.types import CsrGraph, KnnGraph


def cpu_only_variant(greedy: str, buckets: Any) -> str | None:
    """The name of the requested variant if it exists only on the CPU, else ``None``."""
    if greedy == "standby":
        return "--greedy standby"
    if buckets is not None:
        return "the bucketed reverse pass (--buckets)"
    return None


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
    stats: dict | None = None,
) -> np.ndarray:
    """Pick order (int64, ``budget`` or N nodes) of the reverse pass from forward scores.

    ``greedy="standby"`` runs the DataComp script's heuristic on the directed ``knn``;
    ``buckets`` (a count of contiguous id ranges, or one label per node) runs the exact
    greedy on the graph without cross-bucket edges, bucket by bucket, as Dask tasks
    (``client``, else threads). ``stats`` receives the device used and engine statistics.
    """
    for name, value in (("gamma", gamma), ("sampling", sampling), ("greedy", greedy)):
        check(name, value)
    budget = check_budget(budget, csr.n)
    forward = np.ascontiguousarray(forward, dtype=np.float64)
    if forward.shape != (csr.n,) or not np.isfinite(forward).all():
        raise D2ScaleError(f"forward scores must be {csr.n} finite numbers (one per node).")
    device = resolve_device(device, cpu_only_variant(greedy, buckets))
    return reverse_on(device, csr, forward, gamma, budget, sampling, greedy, buckets, knn, client,
                      stats if stats is not None else {})  # fmt: skip


def reverse_on(
    device: str,
    csr: CsrGraph,
    forward: np.ndarray,
    gamma: float,
    budget: int,
    sampling: str,
    greedy: str,
    buckets: Any,
    knn: KnnGraph | None,
    client: Any,
    stats: dict,
) -> np.ndarray:
    """The reverse pass on a resolved ``device`` with checked arguments."""
    stats.update(device=device, variant=_variant(greedy, buckets))
    if greedy == "standby":
        from d2scale.d2.standby import standby_order

        if knn is None or knn.n != csr.n or buckets is not None:
            raise D2ScaleError("greedy='standby' needs the directed kNN graph and no buckets.")
        return standby_order(knn, forward, gamma=gamma, budget=budget, sampling=sampling)
    weights = reverse_weights(csr, gamma, sampling)
    if buckets is not None:
        from d2scale.d2.bucketed import bucket_labels, bucketed_order

        labels = bucket_labels(buckets, csr.n)
        stats["buckets"] = int(np.unique(labels).size)
        return bucketed_order(csr, forward, weights, labels, budget, client=client)
    if device == "cuda":
        from d2scale.d2._cuda import reverse_order_cuda

        return reverse_order_cuda(csr, forward, weights, budget, stats=stats)
    return exact_order(csr, forward, weights, budget)


def _variant(greedy: str, buckets: Any) -> str:
    if greedy == "standby":
        return "standby"
    return "bucketed" if buckets is not None else "exact"
