"""Message passing end to end: symmetrise → forward → reverse (what ``d2scale mp`` and
``d2scale select`` call). Imports only NumPy and numba; Dask comes in with ``buckets``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.forward import FORWARD_MODES, forward_scores
from d2scale.graph.symmetric import symmetrize
from d2scale.reverse import GREEDIES, SAMPLINGS, checked_budget, reverse_order
from d2scale.types import KnnGraph


@dataclass(frozen=True)
class D2Result:
    """``order``: picks (int64; every smaller budget is a prefix); ``forward``: the forward
    scores (float64[N]); ``n_edges``: edges of the symmetrised graph."""

    order: np.ndarray
    forward: np.ndarray
    n_edges: int


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
    timings: dict[str, float] | None = None,
) -> D2Result:
    """D2 Pruning pick order of the nodes of ``knn`` (SPEC §1).

    ``greedy="standby"`` and ``buckets`` (int: contiguous id ranges; array: a label per node)
    are the approximate variants of :func:`d2scale.reverse.reverse_order`. ``timings``
    receives the seconds of the stages "symmetrize", "forward" and "reverse".
    """
    scores = _checked_scores(scores, knn.n)
    _check_options(
        gamma=gamma,
        gamma_forward=gamma_forward,
        mode=mode,
        sampling=sampling,
        greedy=greedy,
        budget=budget,
        n=knn.n,
    )
    with _stage(timings, "symmetrize"):
        csr = symmetrize(knn)
    with _stage(timings, "forward"):
        forward = forward_scores(csr, scores, gamma_forward=gamma_forward, mode=mode, device=device)
    with _stage(timings, "reverse"):
        order = reverse_order(
            csr,
            forward,
            gamma=gamma,
            budget=budget,
            sampling=sampling,
            device=device,
            greedy=greedy,
            buckets=buckets,
            knn=knn,
            client=client,
        )
    return D2Result(order=order, forward=forward, n_edges=csr.n_edges)


def load_graph_arrays(gdir: str) -> KnnGraph:
    """The kNN lists saved in ``gdir`` as ``neighbors.npy`` (int N×k) and ``distances.npy``
    (float N×k), memory-mapped read-only."""
    arrays = {}
    for name in ("neighbors", "distances"):
        path = os.path.join(gdir, f"{name}.npy")
        if not os.path.isfile(path):
            raise D2ScaleError(
                f"{path} is missing: a graph directory holds neighbors.npy and "
                "distances.npy (written by `d2scale graph`)."
            )
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise D2ScaleError(f"cannot read {path} as a .npy array: {e}") from None
    neighbors, distances = arrays["neighbors"], arrays["distances"]
    if neighbors.ndim != 2 or neighbors.shape != distances.shape:
        raise D2ScaleError(
            f"{gdir}: neighbors.npy {neighbors.shape} and distances.npy "
            f"{distances.shape} must have the same N×k shape."
        )
    if neighbors.dtype.kind not in "iu" or distances.dtype.kind != "f":
        raise D2ScaleError(
            f"{gdir}: neighbors.npy must hold integers and distances.npy floats "
            f"(found {neighbors.dtype} and {distances.dtype})."
        )
    return KnnGraph(neighbors=neighbors, distances=distances)


def _checked_scores(scores: Any, n: int) -> np.ndarray:
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


def _check_options(
    *,
    gamma: float,
    gamma_forward: float,
    mode: str,
    sampling: str,
    greedy: str,
    budget: int | None,
    n: int,
) -> None:
    for name, value in (("gamma", gamma), ("gamma_forward", gamma_forward)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.number))
            or not (math.isfinite(value) and value >= 0)
        ):
            raise D2ScaleError(f"{name} must be a finite number ≥ 0; got {value!r}.")
    for name, value, options in (
        ("mode", mode, FORWARD_MODES),
        ("sampling", sampling, SAMPLINGS),
        ("greedy", greedy, GREEDIES),
    ):
        if value not in options:
            raise D2ScaleError(f"{name} must be one of {', '.join(options)}; got {value!r}.")
    checked_budget(budget, n)


@contextmanager
def _stage(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    if timings is not None:
        timings[name] = time.perf_counter() - start
