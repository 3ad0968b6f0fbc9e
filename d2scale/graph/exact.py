"""Exact nearest neighbours: float32 candidates from faiss, float64 re-ranking, certified rows.

faiss computes squared L2 distances as ‖x‖² + ‖y‖² − 2x·y in float32, which loses precision
for close pairs and orders near-ties by rounding noise that depends on how queries were
batched. Here every search fetches a few candidates more than it keeps, recomputes their
squared distances in float64 from the float32 vectors (:func:`sq_dists`), ranks them by
(distance, id), and *certifies* each row: the kept entries are provably the exact top ones
when the last kept distance lies below the worst fetched float32 distance minus the float32
error bound (:func:`l2_error_bound`). Rows that fail (duplicate vectors, near-ties) are
searched again with more candidates. Results are therefore exact and do not depend on
batching, sharding or thread counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import faiss
import numpy as np
from numba import njit, prange

KnnFn = Callable[..., tuple[np.ndarray, np.ndarray]]  # faiss.knn(xq, xb, k) -> (D, I)
MARGIN = 4  # candidates fetched beyond those kept
FEW_QUERIES = 1024
_NO_ID = np.iinfo(np.int64).max  # sorts padding after every real id
_U = 2.0**-24  # float32 unit roundoff


FASTMATH = {"reassoc", "contract"}  # vectorise sums; no assumptions about inf or NaN


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _sq_dists(xq, xb, cand, out):
    # float64 sums of float32 differences: exact to ~1e-16 relative; the summation order is
    # fixed by the compiled code, so equal inputs always give equal outputs.
    nq, c = cand.shape
    d = xq.shape[1]
    for i in prange(nq):
        for j in range(c):
            p = cand[i, j]
            if p < 0:
                out[i, j] = np.inf
                continue
            s = 0.0
            for t in range(d):
                v = np.float64(xq[i, t]) - np.float64(xb[p, t])
                s += v * v
            out[i, j] = s


def sq_dists(xq: np.ndarray, xb: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Float64 squared distances ``‖xq[i] − xb[cand[i, j]]‖²`` (``inf`` where ``cand < 0``)."""
    out = np.empty(cand.shape, dtype=np.float64)
    if cand.size:
        _sq_dists(_f32(xq), _f32(xb), np.ascontiguousarray(cand, dtype=np.int64), out)
    return out


def l2_error_bound(dim: int, norms_q: np.ndarray, max_norm_b: float) -> np.ndarray:
    """Per-query bound on |faiss float32 squared L2 − exact| (expansion or direct sum).

    Each of ‖x‖², ‖y‖², x·y carries at most γ_d = d·u/(1 − d·u) relative error (u = 2⁻²⁴) and
    three roundings combine them, so the error is at most γ_{d+3}·(‖x‖ + ‖y‖)².
    """
    gamma = (dim + 3) * _U / (1 - (dim + 3) * _U)
    return gamma * (np.asarray(norms_q, dtype=np.float64) + max_norm_b) ** 2 * 1.01


def row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norms of the rows (float64; rounding is covered by the 1% in the bound)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))


@njit(inline="always")
def _before(d1, g1, d2, g2):
    return d1 < d2 or (d1 == d2 and g1 < g2)


@njit(parallel=True, cache=True)
def _rank(val, dist_in, gid_in, val_out, dist_out, gid_out):
    # per row, the best len(out) entries by (dist, gid) by insertion: faiss returns the
    # candidates almost in that order, so this is close to linear
    keep = val_out.shape[1]
    for i in prange(val.shape[0]):
        n = 0
        for j in range(val.shape[1]):
            e, g = dist_in[i, j], gid_in[i, j]
            if n == keep and not _before(e, g, dist_out[i, keep - 1], gid_out[i, keep - 1]):
                continue
            k = n if n < keep else keep - 1
            while k > 0 and _before(e, g, dist_out[i, k - 1], gid_out[i, k - 1]):
                dist_out[i, k] = dist_out[i, k - 1]
                gid_out[i, k] = gid_out[i, k - 1]
                val_out[i, k] = val_out[i, k - 1]
                k -= 1
            dist_out[i, k], gid_out[i, k], val_out[i, k] = e, g, val[i, j]
            n = min(n + 1, keep)


def top_by(
    val: np.ndarray, dist: np.ndarray, gid: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``keep`` entries of each row by (dist, gid): (val, dist, gid), padded with
    (-1, inf, max int)."""
    nq = val.shape[0]
    val_out = np.full((nq, keep), -1, dtype=np.int64)
    dist_out = np.full((nq, keep), np.inf)
    gid_out = np.full((nq, keep), _NO_ID, dtype=np.int64)
    if nq and val.shape[1]:
        c64 = np.ascontiguousarray
        _rank(c64(val, dtype=np.int64), c64(dist, dtype=np.float64), c64(gid, dtype=np.int64),
              val_out, dist_out, gid_out)  # fmt: skip
    return val_out, dist_out, gid_out


def rank_certified(
    approx: np.ndarray,
    cand: np.ndarray,
    exact: np.ndarray,
    keep: int,
    eps: np.ndarray,
    ids: np.ndarray | None = None,
    complete: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the best ``keep`` candidates of each row by (exact distance, id), and certify them.

    ``approx``/``cand`` are one faiss result (ascending float32 distances, positions, ``-1``
    padding), ``exact`` the float64 distances of the same candidates, ``ids`` the global id of
    each position (default: the position). A row is certified when it was not full (every
    point was fetched), when ``complete`` is set, or when its last kept distance is below the
    worst fetched approximate distance minus ``eps``. Returns (positions, distances, ok).
    """
    gid = np.where(cand >= 0, cand if ids is None else ids[np.maximum(cand, 0)], _NO_ID)
    pos, dist, _ = top_by(cand, exact, gid, keep)
    if complete or cand.shape[1] == 0:
        return pos, dist, np.ones(len(cand), dtype=bool)
    full = cand[:, -1] >= 0
    ok = ~full | (dist[:, keep - 1] < approx[:, -1].astype(np.float64) - eps)
    return pos, dist, ok


def flat_search(
    xq: np.ndarray,
    xb: np.ndarray,
    keep: int,
    *,
    ids: np.ndarray | None = None,
    knn: KnnFn | None = None,
    margin: int = MARGIN,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``keep`` of each query in ``xb`` by (squared distance, id), certified.

    Returns positions into ``xb`` (int64, ``-1`` padding) and float64 squared distances
    (``inf`` padding). Ties are broken by ``ids[position]`` (default: the position).
    """
    xq, xb, knn = _f32(xq), _f32(xb), knn or knn_cpu
    nq, nb = xq.shape[0], xb.shape[0]
    pos = np.full((nq, keep), -1, dtype=np.int64)
    dist = np.full((nq, keep), np.inf)
    if nq == 0 or nb == 0:
        return pos, dist
    eps = l2_error_bound(xq.shape[1], row_norms(xq), float(row_norms(xb).max()))
    rows, c = np.arange(nq), keep + margin
    while rows.size:
        c = min(c, nb)
        q = xq[rows]
        approx, cand = knn(q, xb, c)
        exact = sq_dists(q, xb, cand)
        p, d, ok = rank_certified(approx, cand, exact, keep, eps[rows], ids, c == nb)
        pos[rows[ok]], dist[rows[ok]] = p[ok], d[ok]
        rows, c = rows[~ok], 4 * c
    return pos, dist


def merge_sorted(
    ids: list[np.ndarray], dists: list[np.ndarray], keep: int, *extra: list[np.ndarray]
) -> tuple[np.ndarray, ...]:
    """Merge per-block top lists (global ids, float64 distances) into the top ``keep`` rows.

    Distance arrays in ``extra`` (one list per array, aligned with ``ids``) are carried along.
    """
    i = np.concatenate(ids, axis=1)
    d = np.concatenate(dists, axis=1)
    cols = np.broadcast_to(np.arange(i.shape[1]), i.shape)
    order, _, _ = top_by(cols, d, np.where(i >= 0, i, _NO_ID), keep)
    valid, order = order >= 0, np.maximum(order, 0)  # fewer columns than keep: padding
    out = [np.where(valid, np.take_along_axis(i, order, axis=1), -1)]
    for a in (d, *(np.concatenate(e, axis=1) for e in extra)):  # distances: pad with inf
        out.append(np.where(valid, np.take_along_axis(a, order, axis=1), np.inf))
    return tuple(out)


@njit(inline="always")
def push(hd, hi, s, r):
    """Insert (s, r) into the ascending arrays hd/hi of fixed size, dropping the last entry."""
    j = hd.shape[0] - 1
    while j > 0 and hd[j - 1] > s:
        hd[j] = hd[j - 1]
        hi[j] = hi[j - 1]
        j -= 1
    hd[j] = s
    hi[j] = r


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _select(ip, qn, bn, col0, out_d, out_i):
    for i in prange(ip.shape[0]):
        for r in range(ip.shape[1]):
            s = qn[i] + bn[r] - 2 * ip[i, r]
            if s < out_d[i, -1]:
                push(out_d[i], out_i[i], s, col0 + r)


def knn_cpu(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``faiss.knn``; for fewer than ``FEW_QUERIES`` queries, BLAS inner products in blocks and
    a compiled selection instead (faiss's direct kernel is ~3× slower there)."""
    xq, xb = _f32(xq), _f32(xb)
    if xq.shape[0] >= FEW_QUERIES:
        return faiss.knn(xq, xb, k)
    out_d = np.full((xq.shape[0], k), np.inf, dtype=np.float32)
    out_i = np.full((xq.shape[0], k), -1, dtype=np.int64)
    qn, bn = np.einsum("ij,ij->i", xq, xq), np.einsum("ij,ij->i", xb, xb)
    for b0 in range(0, xb.shape[0], 16384):
        ip = xq @ xb[b0 : b0 + 16384].T
        _select(ip, qn, bn[b0 : b0 + 16384], b0, out_d, out_i)
    return out_d, out_i


class GpuKnn:
    """``faiss.knn`` on GPU 0 (one ``StandardGpuResources`` per process, used under a lock)."""

    _res = None
    _lock = threading.Lock()

    def __call__(self, xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with GpuKnn._lock:
            if GpuKnn._res is None:
                GpuKnn._res = faiss.StandardGpuResources()
            return faiss.knn_gpu(GpuKnn._res, _f32(xq), _f32(xb), k)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)
