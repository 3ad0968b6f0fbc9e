"""Symmetrise directed kNN lists into the CSR neighbourhood ``N(i)`` of SPEC §1.

``N(i) = kNN(i) ∪ {j : i ∈ kNN(j)}``, built with two counting sorts. (1) The transpose:
scanning sources in order gives every node the sorted list of nodes pointing at it.
(2) The union: scanning columns c in order and emitting c into the rows of kNN(c) and of
the reverse list of c yields rows sorted by column, an edge present in both directions
appearing twice side by side; a last pass keeps one copy with the smaller distance.
Chunks of rows run in threads (numba ``nogil``); per-chunk counters give every chunk
disjoint, ordered slots, so the output does not depend on the number of threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from d2scale.errors import D2ScaleError
from d2scale.types import CsrGraph, KnnGraph

MIN_ROWS_PER_THREAD = 65536  # below this, thread start-up costs more than it saves


def n_threads(n_rows: int) -> int:
    """Threads worth using for ``n_rows`` rows (``NUMBA_NUM_THREADS`` caps the count)."""
    cap = int(os.environ.get("NUMBA_NUM_THREADS", len(os.sched_getaffinity(0))))
    return max(1, min(cap, n_rows // MIN_ROWS_PER_THREAD))


def run_chunks(kernel: Callable, n: int, n_chunks: int, *args) -> list:
    """Call ``kernel(lo, hi, c, *args)`` on ``n_chunks`` contiguous slices of ``range(n)``.

    The slices run in threads, so ``kernel`` must release the GIL (numba ``nogil=True``).
    """
    bounds = [(c * n // n_chunks, (c + 1) * n // n_chunks, c) for c in range(n_chunks)]
    if n_chunks == 1:
        return [kernel(0, n, 0, *args)]
    with ThreadPoolExecutor(n_chunks) as pool:
        return list(pool.map(lambda b: kernel(*b, *args), bounds))


def symmetrize(graph: KnnGraph, n_chunks: int | None = None) -> CsrGraph:
    """The symmetrised neighbourhood of ``graph`` (int32 indices, rows sorted ascending)."""
    neighbors, distances = _checked_arrays(graph)
    n = neighbors.shape[0]
    n_chunks = n_threads(n) if n_chunks is None else n_chunks
    counts = np.zeros((n_chunks, n), np.int64)
    bad = np.zeros((n_chunks, 2), np.int64)
    run_chunks(_count_reverse, n, n_chunks, neighbors, distances, counts, bad)
    n_bad_ids, n_bad_dists = bad.sum(axis=0)
    if n_bad_ids or n_bad_dists:
        raise D2ScaleError(
            f"the kNN graph has {n_bad_ids} neighbour ids outside [-1, {n}) and "
            f"{n_bad_dists} non-finite or negative distances: rebuild it."
        )
    in_ptr = _cursors(counts)
    in_src = np.empty(in_ptr[-1], np.int32)
    in_dist = np.empty(in_ptr[-1], np.float32)
    run_chunks(_fill_reverse, n, n_chunks, neighbors, distances, counts, in_src, in_dist)
    counts[:] = 0
    run_chunks(_count_union, n, n_chunks, neighbors, in_ptr, in_src, counts)
    u_ptr = _cursors(counts)
    u_idx = np.empty(u_ptr[-1], np.int32)
    u_dist = np.empty(u_ptr[-1], np.float32)
    args = (neighbors, distances, in_ptr, in_src, in_dist, counts, u_idx, u_dist)
    run_chunks(_fill_union, n, n_chunks, *args)
    del counts, in_src, in_dist, args
    indptr = np.zeros(n + 1, np.int64)
    run_chunks(_dedupe_count, n, n_chunks, u_ptr, u_idx, indptr)
    np.cumsum(indptr, out=indptr)
    indices = np.empty(indptr[-1], np.int32)
    dists = np.empty(indptr[-1], np.float32)
    run_chunks(_dedupe_fill, n, n_chunks, u_ptr, u_idx, u_dist, indptr, indices, dists)
    return CsrGraph(indptr=indptr, indices=indices, distances=dists)


def _checked_arrays(graph: KnnGraph) -> tuple[np.ndarray, np.ndarray]:
    """C-contiguous (int64 neighbors, float32 distances), with shape and dtype checked."""
    neighbors = np.asarray(graph.neighbors)
    distances = np.asarray(graph.distances)
    if neighbors.ndim != 2 or neighbors.shape != distances.shape:
        raise D2ScaleError(
            f"kNN neighbors {neighbors.shape} and distances {distances.shape} must be two "
            "arrays of the same N×k shape."
        )
    if not np.issubdtype(neighbors.dtype, np.integer):
        raise D2ScaleError(f"kNN neighbors must be integers, got dtype {neighbors.dtype}.")
    if neighbors.shape[0] >= 2**31 - 1:
        raise D2ScaleError("graphs of 2^31 nodes or more are not supported (int32 indices).")
    neighbors = np.ascontiguousarray(neighbors, dtype=np.int64)
    return neighbors, np.ascontiguousarray(distances, dtype=np.float32)


# Kernels inline their tests: a call per entry costs more than the entry's work here.
# After _count_reverse has passed, the only entries to skip are -1 padding and self-loops.


@njit(cache=True, nogil=True)
def _count_reverse(lo, hi, c, neighbors, distances, counts, bad):
    """Sources lo..hi: count reverse edges per target, bad ids and bad distances."""
    n, k = neighbors.shape
    cnt = counts[c]
    n_bad_ids = 0
    n_bad_dists = 0
    for i in range(lo, hi):
        for t in range(k):
            j = neighbors[i, t]
            if j < -1 or j >= n:
                n_bad_ids += 1
            elif j >= 0 and j != i:
                if 0.0 <= distances[i, t] < np.inf:
                    cnt[j] += 1
                else:
                    n_bad_dists += 1
    bad[c, 0] = n_bad_ids
    bad[c, 1] = n_bad_dists


@njit(cache=True, nogil=True)
def _cursors(counts):
    """Turn per-chunk row counts into per-chunk write cursors; return the row pointer."""
    n_chunks, n = counts.shape
    ptr = np.zeros(n + 1, np.int64)
    for j in range(n):
        pos = ptr[j]
        for c in range(n_chunks):
            cnt = counts[c, j]
            counts[c, j] = pos
            pos += cnt
        ptr[j + 1] = pos
    return ptr


@njit(cache=True, nogil=True)
def _fill_reverse(lo, hi, c, neighbors, distances, cursors, in_src, in_dist):
    cursor = cursors[c]
    for i in range(lo, hi):
        for t in range(neighbors.shape[1]):
            j = neighbors[i, t]
            if j >= 0 and j != i:
                p = cursor[j]
                in_src[p] = i
                in_dist[p] = distances[i, t]
                cursor[j] = p + 1


@njit(cache=True, nogil=True)
def _count_union(lo, hi, c, neighbors, in_ptr, in_src, counts):
    cnt = counts[c]
    for col in range(lo, hi):
        for t in range(neighbors.shape[1]):
            j = neighbors[col, t]
            if j >= 0 and j != col:
                cnt[j] += 1
        for e in range(in_ptr[col], in_ptr[col + 1]):
            cnt[in_src[e]] += 1


@njit(cache=True, nogil=True)
def _fill_union(lo, hi, c, neighbors, distances, in_ptr, in_src, in_dist, cursors, u_idx,
                u_dist):
    cursor = cursors[c]
    for col in range(lo, hi):
        for t in range(neighbors.shape[1]):
            j = neighbors[col, t]
            if j >= 0 and j != col:
                p = cursor[j]
                u_idx[p] = col
                u_dist[p] = distances[col, t]
                cursor[j] = p + 1
        for e in range(in_ptr[col], in_ptr[col + 1]):
            i = in_src[e]
            p = cursor[i]
            u_idx[p] = col
            u_dist[p] = in_dist[e]
            cursor[i] = p + 1


@njit(cache=True, nogil=True)
def _dedupe_count(lo, hi, c, u_ptr, u_idx, indptr):
    """Rows lo..hi: store the number of distinct columns of row i in indptr[i + 1]."""
    for i in range(lo, hi):
        m = 0
        for e in range(u_ptr[i], u_ptr[i + 1]):
            m += e == u_ptr[i] or u_idx[e] != u_idx[e - 1]
        indptr[i + 1] = m


@njit(cache=True, nogil=True)
def _dedupe_fill(lo, hi, c, u_ptr, u_idx, u_dist, indptr, indices, dists):
    """Rows lo..hi: one copy of each (adjacent) repeated column, with the smallest distance."""
    for i in range(lo, hi):
        p = indptr[i] - 1
        for e in range(u_ptr[i], u_ptr[i + 1]):
            if e == u_ptr[i] or u_idx[e] != u_idx[e - 1]:
                p += 1
                indices[p] = u_idx[e]
                dists[p] = u_dist[e]
            elif u_dist[e] < dists[p]:
                dists[p] = u_dist[e]
