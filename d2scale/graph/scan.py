"""Certified top-k by BLAS: sgemm distance blocks, compiled selection, float64 re-ranking.

The squared distance ‖q‖² + ‖b‖² − 2 q·b of a block of queries against a block of rows is
one sgemm (the fastest thing a CPU does); a compiled pass keeps each query's best ``c``
candidates. Those candidates are re-ranked by exact float64 distances ``Σ(q − b)²`` and each
query is *certified*: its kept entries are provably the exact top ones by (distance, id)
when the last kept distance lies below the worst fetched float32 distance minus the float32
error bound (:func:`l2_error_bound`); queries that fail (near-ties) are
searched again with four times the candidates. So results are exact over the rows
searched, identical for any blocking, batching or thread count, and distances are accurate
for near-duplicates. Everything here is single-threaded (``nogil``): parallelism comes from
running several tasks at once, which keeps the number of threads equal to the cores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import njit

MARGIN = 4  # candidates fetched beyond those kept
_NO_ID = np.iinfo(np.int64).max
_U = 2.0**-24  # float32 unit roundoff
IpFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (Q, B) -> Q @ B.T, float32


def ip_cpu(q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inner products ``q @ b.T`` (one sgemm)."""
    return q @ b.T


def l2_error_bound(dim: int, norms_q: np.ndarray, max_norm_b: float) -> np.ndarray:
    """Per-query bound on |float32 squared L2 − exact| (expansion or direct sum).

    Each of ‖x‖², ‖y‖², x·y carries at most γ_d = d·u/(1 − d·u) relative error (u = 2⁻²⁴) and
    three roundings combine them, so the error is at most γ_{d+3}·(‖x‖ + ‖y‖)².
    """
    gamma = (dim + 3) * _U / (1 - (dim + 3) * _U)
    return gamma * (np.asarray(norms_q, dtype=np.float64) + max_norm_b) ** 2 * 1.01


def gpu_available() -> bool:
    """Whether CuPy sees a CUDA GPU."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no driver, no device: CuPy raises its own errors
        return False


def ip_gpu(q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``q @ b.T`` on the GPU (the certification makes the result the CPU's)."""
    import cupy

    return cupy.asnumpy(cupy.asarray(q) @ cupy.asarray(b).T)


def ip_for(device: str) -> IpFn:
    return ip_gpu if device == "cuda" else ip_cpu


@njit(cache=True, nogil=True)
def _push(hd, hi, s, r):
    j = hd.shape[0] - 1
    while j > 0 and hd[j - 1] > s:
        hd[j] = hd[j - 1]
        hi[j] = hi[j - 1]
        j -= 1
    hd[j] = s
    hi[j] = r


@njit(cache=True, nogil=True)
def _fold_row(hd, hi, q, row, pos0):
    """Fold the distances ``q + row`` (positions from pos0) into one sorted heap."""
    bar = hd[-1] - q
    for r in range(row.shape[0]):
        if row[r] < bar:
            _push(hd, hi, q + row[r], pos0 + r)
            bar = hd[-1] - q


@njit(cache=True, nogil=True)
def _select(part, qn, pos0, out_d, out_i):
    """Fold the block of distances ``qn + part`` (positions from pos0) into the sorted
    heaps; ``part`` = ‖b‖² − 2q·b from one augmented sgemm."""
    for i in range(part.shape[0]):
        _fold_row(out_d[i], out_i[i], qn[i], part[i], pos0)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _exact(xq, xb, cand, out, scale, dim):
    # float64 sums of float32 differences over the first ``dim`` columns, ``xb`` scaled by
    # ``scale`` (exact: a power of two); vectorised in a fixed order by the compiled code,
    # so equal inputs always give equal outputs
    for i in range(cand.shape[0]):
        for j in range(cand.shape[1]):
            p = cand[i, j]
            if p < 0:
                out[i, j] = np.inf
                continue
            s = 0.0
            for t in range(dim):
                v = np.float64(xq[i, t]) - np.float64(xb[p, t]) * scale
                s += v * v
            out[i, j] = s


@njit(cache=True, nogil=True)
def _rank(cand, exact, gid, keep, pos_out, d_out):
    """Per row, the best ``keep`` candidates by (exact distance, global id)."""
    for i in range(cand.shape[0]):
        n = 0
        g_out = np.full(keep, np.iinfo(np.int64).max)
        for j in range(cand.shape[1]):
            e, g = exact[i, j], gid[i, j]
            if n == keep and not (
                e < d_out[i, keep - 1] or (e == d_out[i, keep - 1] and g < g_out[keep - 1])
            ):
                continue
            k = n if n < keep else keep - 1
            while k > 0 and (e < d_out[i, k - 1] or (e == d_out[i, k - 1] and g < g_out[k - 1])):
                d_out[i, k] = d_out[i, k - 1]
                g_out[k] = g_out[k - 1]
                pos_out[i, k] = pos_out[i, k - 1]
                k -= 1
            d_out[i, k], g_out[k], pos_out[i, k] = e, g, cand[i, j]
            n = min(n + 1, keep)


def unique_sorted(values: np.ndarray, return_index: bool = False):
    """``np.unique`` by sorting (numpy 2.4's hash-based ``np.unique`` measured 5–25× slower
    on millions of ints); ``values`` already sorted ascending is taken as it is."""
    v = np.asarray(values).ravel()
    if v.size > 1 and (v[1:] < v[:-1]).any():
        order = np.argsort(v, kind="stable") if return_index else None
        v = v[order] if return_index else np.sort(v)
    else:
        order = None
    first = np.flatnonzero(np.concatenate([[True], v[1:] != v[:-1]])) if v.size else v[:0]
    if not return_index:
        return v[first]
    return v[first], (first if order is None else order[first])


def norms2(x: np.ndarray) -> np.ndarray:
    """Squared row norms (float32)."""
    return np.einsum("ij,ij->i", x, x)


def augment(xb: np.ndarray) -> np.ndarray:
    """``[−2·xb, ‖xb‖²]`` (float32): one sgemm with ``[q, 1]`` then gives ‖b‖² − 2q·b.
    (Scaling by −2 is exact, so ``−0.5 · aug[:, :-1]`` is ``xb`` again.)"""
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    out = np.empty((xb.shape[0], xb.shape[1] + 1), dtype=np.float32)
    np.multiply(xb, np.float32(-2.0), out=out[:, :-1])
    out[:, -1] = norms2(xb)
    return out


def topk(
    xq: np.ndarray,
    xb: np.ndarray,
    spans: Sequence[tuple[int, int]],
    keep: int,
    ids: np.ndarray | None = None,
    ip: IpFn = ip_cpu,
    margin: int = MARGIN,
    aug: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``keep`` of each query among the rows ``xb[a:b]`` of ``spans``.

    Returns positions into ``xb`` (int64, ``-1`` padding) and float64 squared distances
    (``inf`` padding), sorted by (distance, ``ids[position]``) (``ids`` default: position).
    ``aug``: :func:`augment` of ``xb``, when the caller keeps it (``xb`` may then be None).
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nq = xq.shape[0]
    pos = np.full((nq, keep), -1, dtype=np.int64)
    dist = np.full((nq, keep), np.inf)
    total = sum(b - a for a, b in spans)
    if nq == 0 or total == 0:
        return pos, dist
    if aug is None:
        aug = augment(xb[min(a for a, _ in spans) : max(b for _, b in spans)])
        shift = min(a for a, _ in spans)
        spans = [(a - shift, b - shift) for a, b in spans]
    else:
        shift = 0
    qn = norms2(xq)
    max_b = float(np.sqrt(max(float(aug[a:b, -1].max()) for a, b in spans if b > a)))
    eps = l2_error_bound(xq.shape[1] + 1, np.sqrt(qn.astype(np.float64)), max_b)
    qa = np.concatenate([xq, np.ones((nq, 1), np.float32)], axis=1)
    rows, c = np.arange(nq), keep + margin
    while rows.size:
        c = min(c, total)
        q = qa if rows.size == nq else qa[rows]
        heap_d = np.full((rows.size, c), np.inf, dtype=np.float32)
        heap_i = np.full((rows.size, c), -1, dtype=np.int64)
        for a, b in spans:
            if b > a:
                _select(ip(q, aug[a:b]), qn[rows], a, heap_d, heap_i)
        exact = np.empty(heap_i.shape)
        _exact(q, aug, heap_i, exact, np.float64(-0.5), xq.shape[1])
        cand = np.where(heap_i >= 0, heap_i + shift, -1)
        gid = np.where(cand >= 0, cand if ids is None else ids[np.maximum(cand, 0)], _NO_ID)
        p = np.full((rows.size, keep), -1, dtype=np.int64)
        d = np.full((rows.size, keep), np.inf)
        _rank(cand, exact, gid, keep, p, d)
        ok = (c >= total) | (heap_i[:, -1] < 0)
        ok |= d[:, keep - 1] < heap_d[:, -1].astype(np.float64) - eps[rows]
        pos[rows[ok]], dist[rows[ok]] = p[ok], d[ok]
        rows, c = rows[~ok], 4 * c
    return pos, dist


def merge(results: Sequence[tuple[np.ndarray, np.ndarray]], keep: int):
    """Merge per-block top lists (global ids, float64 squared distances) into the top
    ``keep`` by (distance, id): (ids, distances), ``-1``/``inf`` padded."""
    ids = np.concatenate([r[0] for r in results], axis=1)
    d = np.ascontiguousarray(np.concatenate([r[1] for r in results], axis=1), dtype=np.float64)
    cols = np.where(ids >= 0, np.arange(ids.shape[1])[None, :], -1).astype(np.int64)
    gid = np.where(ids >= 0, ids, _NO_ID).astype(np.int64)
    pos = np.full((ids.shape[0], keep), -1, dtype=np.int64)
    dist = np.full((ids.shape[0], keep), np.inf)
    _rank(cols, d, gid, keep, pos, dist)
    out = np.where(pos >= 0, np.take_along_axis(ids, np.maximum(pos, 0), axis=1), -1)
    return out, dist


def rerank(
    xq: np.ndarray, xb: np.ndarray, cand: np.ndarray, ids: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``keep`` of the candidate positions ``cand`` by (exact float64 distance,
    ``ids[position]``): (positions, squared distances)."""
    exact = np.empty(cand.shape)
    _exact(np.ascontiguousarray(xq, dtype=np.float32), xb, cand, exact, 1.0, xb.shape[1])
    gid = np.where(cand >= 0, ids[np.maximum(cand, 0)], _NO_ID)
    pos = np.full((cand.shape[0], keep), -1, dtype=np.int64)
    dist = np.full((cand.shape[0], keep), np.inf)
    _rank(cand, exact, gid, keep, pos, dist)
    return pos, dist
