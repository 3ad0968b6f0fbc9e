"""Message passing end to end: symmetrise → forward → reverse (what ``d2scale mp``, the
``d2`` selection method and the vision coresets call). Imports only NumPy and numba; Dask
comes in with ``buckets``.

The exact greedy on the CPU (the default) keeps one array per edge besides the graph's
int32 ids: the float64 reverse weights, written over the distances (see
:mod:`d2scale.d2.weights`); the forward pass shares them when ``γf = γr``. About 12 bytes
per symmetric edge, plus ~60 bytes per node, after the symmetrisation's peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from d2scale.backends import resolve_device
from d2scale.d2.bucketed import check_bucket_count
from d2scale.d2.exact import exact_order
from d2scale.d2.forward import forward_on
from d2scale.d2.reverse import cpu_only_variant, reverse_on
from d2scale.d2.weights import unit_weights, weights_in_place
from d2scale.errors import D2ScaleError
from d2scale.graph.symmetric import symmetrize
from d2scale.params import check, check_budget
from d2scale.progress import timed
from d2scale.types import KnnGraph


@dataclass(frozen=True)
class D2Result:
    """``order``: picks (int64; every smaller budget is a prefix); ``forward``: the forward
    scores (float64[N]); ``n_edges``: edges of the symmetrised graph; ``stats``: the device
    and variant used, engine statistics and stage seconds."""

    order: np.ndarray
    forward: np.ndarray
    n_edges: int
    stats: dict = field(default_factory=dict)


def d2_order(
    knn: KnnGraph,
    scores: np.ndarray,
    *,
    gamma: float,
    gamma_forward: float = 1.0,
    mode: str = "sum",
    sampling: str = "weighted",
    budget: int | None = None,
    device: str = "cpu",
    greedy: str = "exact",
    buckets: Any = None,
    client: Any = None,
) -> D2Result:
    """D2 Pruning pick order of the nodes of ``knn`` (SPEC §1).

    ``greedy="standby"`` and ``buckets`` (int: contiguous id ranges; array: a label per node)
    are the approximate CPU-only variants; with ``device="auto"`` they run on the CPU.
    """
    scores = checked_scores(scores, knn.n)
    for name, value in (("gamma", gamma), ("gamma_forward", gamma_forward), ("mode", mode),
                        ("sampling", sampling), ("greedy", greedy)):  # fmt: skip
        check(name, value)
    budget = check_budget(budget, knn.n)
    check_bucket_count(buckets, knn.n)
    device = resolve_device(device, cpu_only_variant(greedy, buckets))
    timings: dict[str, float] = {}
    if device == "cpu" and greedy == "exact" and buckets is None:
        order, forward, n_edges = _exact_on_cpu(knn, scores, gamma, gamma_forward, mode,
                                                sampling, budget, timings)  # fmt: skip
        return D2Result(order, forward, n_edges, {"device": "cpu", "variant": "exact",
                                                  "seconds": timings})  # fmt: skip
    with timed(timings, "symmetrize"):
        csr = symmetrize(knn)
    with timed(timings, "forward"):
        forward = forward_on(device, csr, scores, gamma_forward, mode)
    stats: dict = {}
    with timed(timings, "reverse"):
        order = reverse_on(device, csr, forward, gamma, budget, sampling, greedy, buckets, knn,
                           client, stats)  # fmt: skip
    return D2Result(order, forward, csr.n_edges, {**stats, "seconds": timings})


def _exact_on_cpu(knn, scores, gamma, gamma_forward, mode, sampling, budget, timings):
    """(order, forward scores, edges) of the exact greedy on the CPU, in the lean layout."""
    with timed(timings, "symmetrize"):
        csr = symmetrize(knn, weight_room=True)
    shared = sampling == "weighted" and gamma == gamma_forward
    with timed(timings, "forward"):
        weights = weights_in_place(csr, gamma) if shared else None
        forward = forward_on("cpu", csr, scores, gamma_forward, mode, weights=weights)
    with timed(timings, "reverse"):
        if weights is None:
            absolute = sampling == "absolute"
            weights = unit_weights(csr.n_edges) if absolute else weights_in_place(csr, gamma)
        order = exact_order(csr, forward, weights, budget)
    return order, forward, csr.n_edges


def checked_scores(scores: Any, n: int) -> np.ndarray:
    """``scores`` as ``n`` finite float64 numbers, else one sentence."""
    scores = np.asarray(scores)
    if scores.shape != (n,) or scores.dtype.kind not in "iuf":
        raise D2ScaleError(
            f"scores must be {n} numbers (one per graph node); got {scores.dtype} {scores.shape}."
        )
    scores = scores.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise D2ScaleError(f"scores must be finite; score {int(bad[0])} is {scores[bad[0]]}.")
    return scores
