"""Exact re-ranking of search-space candidates by full Euclidean distances.

A PCA search finds each query's best ``m`` candidates; their exact order comes from float64
sums over the full vectors (:func:`pair_d2`). The search shards hold only search-space rows,
so the full rows are read in a separate pass: :func:`d2scale.graph.shards.rerank_streamed`,
a Dask task that holds only the full rows of a block of queries and streams the pool past
them, chunk by chunk, computing each (query, candidate) pair when the candidate's chunk goes
by. Its memory is the query block and one chunk, whatever the pool's size. Every distance
comes from the one kernel, so the result does not depend on the blocks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from d2scale.graph import scan


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _pair_d2(xq, qi, xb, bi, out):
    # float64 sums of float32 differences, vectorised in a fixed order by the compiled code
    for t in range(qi.shape[0]):
        a, b = qi[t], bi[t]
        s = 0.0
        for j in range(xq.shape[1]):
            v = np.float64(xq[a, j]) - np.float64(xb[b, j])
            s += v * v
        out[t] = s


def pair_d2(xq: np.ndarray, qi: np.ndarray, xb: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """Exact squared distances (float64) of the pairs (``xq[qi[t]]``, ``xb[bi[t]]``)."""
    out = np.empty(qi.shape[0])
    if qi.shape[0]:
        _pair_d2(
            np.ascontiguousarray(xq, dtype=np.float32),
            np.ascontiguousarray(qi, dtype=np.int64),
            np.ascontiguousarray(xb, dtype=np.float32),
            np.ascontiguousarray(bi, dtype=np.int64),
            out,
        )
    return out


def rank(cand: np.ndarray, d2: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best ``keep`` candidates (global ids, ``-1`` = none) by (distance, id)."""
    d2 = np.where(cand >= 0, d2, np.inf)
    return scan.merge([(cand.astype(np.int64), d2)], keep)


def plan_blocks(n: int, row_bytes: int, budget: int, tasks: int) -> list[tuple[int, int]]:
    """Split ``n`` query rows into blocks that ``tasks`` running together hold within
    ``budget`` bytes (``row_bytes`` per row), at least ``tasks`` blocks when there are that
    many rows: ``(first, end)`` ranges."""
    per = max(1, min(budget // max(1, tasks * row_bytes), -(-n // max(1, tasks))))
    return [(a, min(n, a + per)) for a in range(0, n, per)]
