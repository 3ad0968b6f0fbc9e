"""Bucketed reverse pass: the exact greedy on the graph without cross-bucket edges.

Dropping the edges between buckets splits the graph into independent parts. Each bucket
runs the exact greedy on its own (Dask tasks, in parallel) and records the score of every
pick when it was picked. A pick's score depends only on earlier picks of its own bucket,
so the global greedy on the bucketed graph always takes the bucket head with the highest
score (ties → lowest node id): merging the bucket sequences that way reproduces it exactly,
whatever the number of workers. It differs from the exact greedy on the full graph, which
is why it is a named option and the benchmark reports the Jaccard agreement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from d2scale.backends import cpu_threads
from d2scale.d2._greedy import greedy_kernel
from d2scale.errors import D2ScaleError
from d2scale.params import check_budget
from d2scale.types import CsrGraph

TASKS_PER_WORKER = 4  # buckets are grouped into about this many tasks per worker


def contiguous_buckets(n: int, n_buckets: int) -> np.ndarray:
    """Labels (int64[n]) cutting the node ids into ``n_buckets`` near-equal ranges."""
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, (int, np.integer)) or n_buckets < 1:
        raise D2ScaleError(f"the number of buckets must be an integer ≥ 1; got {n_buckets!r}.")
    return np.arange(n, dtype=np.int64) * int(n_buckets) // max(n, 1)


def check_bucket_count(buckets: Any, n: int) -> None:
    """Refuse a bucket count above the ``n`` nodes (``mp`` and ``select`` check it before
    any work): each node would be a bucket of its own, no edge would be left and the reverse
    pass would order the nodes by forward score alone."""
    if isinstance(buckets, (int, np.integer)) and not isinstance(buckets, bool) and buckets > n:
        raise D2ScaleError(
            f"the 'buckets' parameter ({buckets}) is more than the {n:,} nodes: every node "
            f"would be a bucket of its own and no edge would be left; use at most {n:,}."
        )


def bucket_labels(buckets: int | np.ndarray, n: int) -> np.ndarray:
    """``buckets`` as one integer label per node: a count gives :func:`contiguous_buckets`."""
    if isinstance(buckets, (int, np.integer)) and not isinstance(buckets, bool):
        return contiguous_buckets(n, buckets)
    labels = np.asarray(buckets)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise D2ScaleError(
            f"buckets must be a count or {n} integer labels (one per node); got "
            f"{labels.dtype} {labels.shape}."
        )
    return labels


def bucketed_order(
    csr: CsrGraph,
    forward: np.ndarray,
    weights: np.ndarray,
    labels: np.ndarray,
    budget: int | None,
    client: Any = None,
) -> np.ndarray:
    """Greedy pick order (int64) on ``csr`` without its cross-bucket edges.

    ``labels[i]`` is the bucket of node i (any integers). Buckets run as Dask tasks on
    ``client`` (a ``distributed.Client``) or, without one, on Dask's threaded scheduler.
    """
    labels = bucket_labels(labels, csr.n)
    budget = check_budget(budget, csr.n)
    forward = np.ascontiguousarray(forward, dtype=np.float64)
    if forward.shape != (csr.n,) or not np.isfinite(forward).all():
        raise D2ScaleError(f"forward scores must be {csr.n} finite numbers (one per node).")
    dense = np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)
    perm = np.argsort(dense, kind="stable")  # bucket by bucket, ascending ids inside
    starts = np.concatenate([[0], np.cumsum(np.bincount(dense))]).astype(np.int64)
    indptr, indices, sub_weights = _bucket_graph(
        csr.indptr, csr.indices, np.asarray(weights, dtype=np.float64), dense, perm, starts
    )
    values = forward[perm]
    seqs = _run_tasks(
        _task_ranges(starts, indptr, client),
        starts,
        indptr,
        indices,
        sub_weights,
        values,
        budget,
        client,
    )
    picks = np.concatenate([s[0] for s in seqs] + [np.empty(0, np.int64)])
    picked = np.concatenate([s[1] for s in seqs] + [np.empty(0, np.float64)])
    lengths = np.concatenate([s[2] for s in seqs] + [np.empty(0, np.int64)])
    return perm[_merge(picks, picked, lengths, perm, budget)]


def _task_ranges(starts: np.ndarray, indptr: np.ndarray, client: Any) -> list[tuple[int, int]]:
    """Consecutive bucket ranges of about equal work (nodes + edges), a few per worker."""
    n_buckets = len(starts) - 1
    workers = sum(client.nthreads().values()) if client is not None else cpu_threads()
    n_tasks = max(1, min(n_buckets, TASKS_PER_WORKER * workers))
    work = starts + indptr[starts]  # cumulative nodes + edges at each bucket start
    cuts = np.searchsorted(work, np.linspace(0, work[-1], n_tasks + 1)[1:-1], side="right")
    bounds = np.unique(np.clip(np.concatenate([[0], cuts, [n_buckets]]), 0, n_buckets))
    return [(int(bounds[t]), int(bounds[t + 1])) for t in range(len(bounds) - 1)]


def _run_tasks(ranges, starts, indptr, indices, weights, values, budget, client) -> list:
    """One Dask task per bucket range; each gets only its own slice of the arrays."""
    import dask

    tasks = []
    for b0, b1 in ranges:
        lo, hi = starts[b0], starts[b1]
        e0, e1 = indptr[lo], indptr[hi]
        tasks.append(
            dask.delayed(_greedy_buckets, pure=True)(
                starts[b0 : b1 + 1] - lo,
                indptr[lo : hi + 1] - e0,
                indices[e0:e1],
                weights[e0:e1],
                values[lo:hi],
                budget,
                lo,
            )
        )
    if client is not None:
        return client.gather(client.compute(tasks))
    return list(dask.compute(*tasks, scheduler="threads"))


def _greedy_buckets(starts, indptr, indices, weights, values, budget, offset):
    """Exact greedy of every bucket of one task: (picks in bucket-major positions + offset,
    their scores when picked, the number of picks per bucket)."""
    picks, picked, lengths = [], [], np.empty(len(starts) - 1, np.int64)
    for b in range(len(starts) - 1):
        lo, hi = starts[b], starts[b + 1]
        e0 = indptr[lo]
        p, v = greedy_kernel(
            indptr[lo : hi + 1] - e0,
            indices[e0 : indptr[hi]],
            weights[e0 : indptr[hi]],
            values[lo:hi],
            np.zeros(hi - lo, np.uint8),
            min(budget, hi - lo),
            False,
        )
        picks.append(p + lo + offset)
        picked.append(v)
        lengths[b] = len(p)
    return np.concatenate(picks), np.concatenate(picked), lengths


@njit(cache=True, nogil=True)
def _bucket_graph(indptr, indices, weights, dense, perm, starts):
    """Rows in bucket-major order, keeping same-bucket edges, with ids local to the bucket."""
    n = perm.shape[0]
    local = np.empty(n, np.int64)
    for p in range(n):
        local[perm[p]] = p - starts[dense[perm[p]]]
    out_ptr = np.zeros(n + 1, np.int64)
    for p in range(n):
        u = perm[p]
        m = 0
        for e in range(indptr[u], indptr[u + 1]):
            m += dense[indices[e]] == dense[u]
        out_ptr[p + 1] = out_ptr[p] + m
    out_idx = np.empty(out_ptr[n], np.int32)
    out_w = np.empty(out_ptr[n], np.float64)
    for p in range(n):
        u = perm[p]
        q = out_ptr[p]
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            if dense[v] == dense[u]:
                out_idx[q] = local[v]
                out_w[q] = weights[e]
                q += 1
    return out_ptr, out_idx, out_w


@njit(cache=True, nogil=True)
def _merge(picks, picked, lengths, perm, budget):
    """Merge bucket sequences: always the head with the highest score, ties → lowest id."""
    n_seq = lengths.shape[0]
    head = np.zeros(n_seq + 1, np.int64)
    for b in range(n_seq):
        head[b + 1] = head[b] + lengths[b]
    end = head[1:].copy()
    heap = np.empty(n_seq, np.int64)
    size = 0
    for b in range(n_seq):
        if lengths[b] > 0:
            heap[size] = b
            size = _heap_up(heap, size, head, picks, picked, perm)
    out = np.empty(min(budget, picks.shape[0]), np.int64)
    for c in range(out.shape[0]):
        b = heap[0]
        out[c] = picks[head[b]]
        head[b] += 1
        if head[b] == end[b]:
            size -= 1
            heap[0] = heap[size]
        _heap_down(heap, size, head, picks, picked, perm)
    return out


@njit(cache=True, nogil=True)
def _beats(a, b, head, picks, picked, perm):
    ka, kb = picked[head[a]], picked[head[b]]
    return ka > kb or (ka == kb and perm[picks[head[a]]] < perm[picks[head[b]]])


@njit(cache=True, nogil=True)
def _heap_up(heap, size, head, picks, picked, perm):
    i = size
    while i > 0 and _beats(heap[i], heap[(i - 1) // 2], head, picks, picked, perm):
        heap[i], heap[(i - 1) // 2] = heap[(i - 1) // 2], heap[i]
        i = (i - 1) // 2
    return size + 1


@njit(cache=True, nogil=True)
def _heap_down(heap, size, head, picks, picked, perm):
    i = 0
    while True:
        best = i
        for c in (2 * i + 1, 2 * i + 2):
            if c < size and _beats(heap[c], heap[best], head, picks, picked, perm):
                best = c
        if best == i:
            return
        heap[i], heap[best] = heap[best], heap[i]
        i = best
