"""IVF search for kNN graphs: PCA search space, k-means lists, bucketed scans, certified ranks.

The index follows faiss's ``PCA,IVF,Flat`` + refine recipe with the queries being the database:

* an optional PCA rotation (:func:`fit_pca`) gives a smaller *search space*; candidates are
  ranked there, then re-ranked with exact full-dimensional distances;
* k-means centroids (:func:`train_centroids`) define ``nlist`` inverted lists; every point is
  assigned to, and every query probes, its nearest lists by exact, certified distances
  (:func:`probe`), so lists and probes never depend on batching;
* :func:`bucket_scan` is faiss's ``big_batch_search`` over arrays: each inverted list is
  scanned once for all the queries that probe it, into a :class:`faiss.ResultHeap`;
* :func:`ivf_search` certifies the candidate ranks like :mod:`d2scale.graph.exact`, so the
  result is the exact (search-space) top-m of the probed lists and then the exact top
  entries by full distance — identical for any partitioning or sharding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
from numba import njit, prange

from d2scale.graph.exact import (
    FASTMATH,
    MARGIN,
    GpuKnn,
    KnnFn,
    flat_search,
    knn_cpu,
    l2_error_bound,
    push,
    rank_certified,
    row_norms,
    sq_dists,
)

MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid
KMEANS_ITER = 8


def choose_nlist(n: int) -> int:
    """About 2·√n lists rounded to a power of two, at most n/39 (training) and 65,536.

    Coarse assignment costs n·nlist distances and the scan n·nprobe·n/nlist, so the sum is
    smallest near nlist = √(nprobe·n); nprobe ≈ 4–8 on CLIP-like data gives ~2·√n.
    """
    target = 2 * math.sqrt(n)
    nlist = 2 ** round(math.log2(max(target, 1)))
    return int(max(1, min(nlist, n // MIN_POINTS_PER_LIST, 65536)))


def nprobe_grid(nlist: int) -> list[int]:
    """Candidate ``nprobe`` values tried by the recall tuning, ascending."""
    grid = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32]  # then steps of ~1/8
    while grid[-1] < nlist:
        grid.append(grid[-1] + max(1, grid[-1] // 8))
    return [p for p in grid if p < nlist] + [nlist]


# ---------------------------------------------------------------- PCA search space


@dataclass(frozen=True)
class Projection:
    """``y = (x − mean) @ components`` computed in float64, rounded to float32."""

    mean: np.ndarray  # (d,) float64
    components: np.ndarray  # (d, d') float64, orthonormal columns

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.dim), dtype=np.float32)
        if x.shape[0]:
            _project(np.ascontiguousarray(x, dtype=np.float32), self.mean, self.components, out)
        return out


@njit(parallel=True, cache=True)
def _project(x, mean, w, out):
    # accumulate over input dims in a fixed order, vectorised across output dims
    n, d = x.shape
    dp = w.shape[1]
    for i in prange(n):
        acc = np.zeros(dp)
        for t in range(d):
            v = np.float64(x[i, t]) - mean[t]
            for j in range(dp):
                acc[j] += v * w[t, j]
        for j in range(dp):
            out[i, j] = np.float32(acc[j])


def fit_pca(sample: np.ndarray, energy: float, multiple: int = 16) -> Projection | None:
    """PCA keeping ``energy`` of the variance (dims rounded up to ``multiple``).

    Returns None when that needs more than half the dimensions (no speed-up worth the loss).
    """
    mean, evals, evecs = _eig(sample)
    share = np.cumsum(evals) / max(evals.sum(), 1e-300)
    d = sample.shape[1]
    dim = min(d, multiple * math.ceil(int(np.searchsorted(share, energy) + 1) / multiple))
    if dim > d // 2:
        return None
    return Projection(mean, np.ascontiguousarray(evecs[:, :dim]))


def pca_of_dim(sample: np.ndarray, dim: int) -> Projection:
    """PCA with exactly ``dim`` components."""
    mean, _, evecs = _eig(sample)
    return Projection(mean, np.ascontiguousarray(evecs[:, :dim]))


def _eig(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and descending eigen-decomposition of the sample covariance (float32 product)."""
    mean = sample.mean(axis=0, dtype=np.float64)
    xc = (sample - mean).astype(np.float32)
    cov = (xc.T @ xc).astype(np.float64) / max(1, xc.shape[0] - 1)
    evals, evecs = np.linalg.eigh(cov)
    return mean, evals[::-1].clip(0), evecs[:, ::-1]


# ---------------------------------------------------------------- coarse quantiser


def train_centroids(sample: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """k-means centroids (float32, ``nlist`` × d) of a training sample, seeded."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    km = faiss.Kmeans(
        sample.shape[1],
        nlist,
        niter=KMEANS_ITER,
        seed=seed,
        max_points_per_centroid=max(256, sample.shape[0] // nlist + 1),
        min_points_per_centroid=1,
    )
    km.train(sample)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def probe(
    y: np.ndarray, centroids: np.ndarray, nprobe: int, knn: KnnFn | None = None
) -> np.ndarray:
    """The ``nprobe`` nearest lists of each row (int32), by exact distance then list id."""
    knn = knn or knn_small
    pos, _ = flat_search(y, centroids, min(nprobe, centroids.shape[0]), knn=knn)
    return pos.astype(np.int32)


# ---------------------------------------------------------------- list storage and scans


@dataclass
class Lists:
    """Inverted lists over arrays: rows sorted by (list, global id).

    ``ids`` are global ids, ``x`` full vectors, ``y`` search-space vectors (``None``: search
    in ``x``), ``lims[l]:lims[l+1]`` the rows of list ``l``.
    """

    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray | None
    lims: np.ndarray

    def __post_init__(self) -> None:
        self.max_norm = float(row_norms(self.search).max(initial=0.0))  # for error bounds

    @property
    def search(self) -> np.ndarray:
        return self.x if self.y is None else self.y

    @property
    def nbytes(self) -> int:
        extra = 0 if self.y is None else self.y.nbytes
        return self.ids.nbytes + self.x.nbytes + extra + self.lims.nbytes


def list_order(lists: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of rows by list, and the list boundaries (``nlist + 1``)."""
    order = np.argsort(lists, kind="stable")
    lims = np.searchsorted(lists[order], np.arange(nlist + 1)).astype(np.int64)
    return order, lims


ScanFn = Callable[..., tuple[np.ndarray, np.ndarray]]  # (yq, probes, yb, lims, c) -> (D, I)


@njit(inline="always", fastmath=FASTMATH)
def _l2(x, y):
    s = np.float32(0.0)
    for t in range(x.shape[0]):
        v = x[t] - y[t]
        s += v * v
    return s


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _scan(yq, probes, order, yb, lims, out_d, out_i):
    for ii in prange(order.shape[0]):
        i = order[ii]
        hd, hi = out_d[i], out_i[i]
        hd[:] = np.inf
        hi[:] = -1
        for j in range(probes.shape[1]):
            lst = probes[i, j]
            for r in range(lims[lst], lims[lst + 1]):
                s = _l2(yq[i], yb[r])
                if s < hd[-1]:
                    push(hd, hi, s, r)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _brute(xq, xb, out_d, out_i):
    for i in prange(xq.shape[0]):
        hd, hi = out_d[i], out_i[i]
        hd[:] = np.inf
        hi[:] = -1
        for r in range(xb.shape[0]):
            s = _l2(xq[i], xb[r])
            if s < hd[-1]:
                push(hd, hi, s, r)


def scan_lists(
    yq: np.ndarray, probes: np.ndarray, yb: np.ndarray, lims: np.ndarray, c: int
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``c`` of each query over its probed lists (float32 D, positions in yb).

    A compiled per-query scan (queries taken in list order, so neighbouring queries share
    cached lists); no distance matrix is materialised, which suits small search spaces.
    """
    nq = yq.shape[0]
    out_d = np.empty((nq, c), dtype=np.float32)
    out_i = np.empty((nq, c), dtype=np.int64)
    if nq:
        order = np.argsort(probes[:, 0], kind="stable") if probes.shape[1] else np.arange(nq)
        _scan(_f32(yq), np.ascontiguousarray(probes, dtype=np.int64), order, _f32(yb), lims,
              out_d, out_i)  # fmt: skip
    return out_d, out_i


def knn_small(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``faiss.knn`` for small databases or dimensions (centroids, PCA space), compiled."""
    out_d = np.empty((xq.shape[0], k), dtype=np.float32)
    out_i = np.empty((xq.shape[0], k), dtype=np.int64)
    if xq.shape[0]:
        _brute(_f32(xq), _f32(xb), out_d, out_i)
    return out_d, out_i


def bucket_scan(
    yq: np.ndarray,
    probes: np.ndarray,
    yb: np.ndarray,
    lims: np.ndarray,
    c: int,
    knn: KnnFn = faiss.knn,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`scan_lists` through a ``knn`` kernel, one call per list (GPU path).

    Like ``faiss.contrib.big_batch_search`` (method ``knn_function``): the (query, list)
    pairs are bucket-sorted by list and every list is scanned once, with one ``knn`` call,
    for all the queries that probe it; no inverted-list copies are made.
    """
    nq = yq.shape[0]
    heap = faiss.ResultHeap(nq, c)
    if nq:
        flat = probes.ravel()
        order = np.argsort(flat, kind="stable")
        qids = order // probes.shape[1]  # query ids grouped by list
        blims = np.searchsorted(flat[order], np.arange(len(lims)))
        for lst in np.flatnonzero((np.diff(blims) > 0) & (np.diff(lims) > 0)):
            q = qids[blims[lst] : blims[lst + 1]]
            b0, b1 = int(lims[lst]), int(lims[lst + 1])
            dist, pos = knn(yq[q], yb[b0:b1], min(c, b1 - b0))
            heap.add_result_subset(q, dist, pos + b0)
    heap.finalize()
    return heap.D, heap.I


@dataclass(frozen=True)
class Kernels:
    """The search kernels of one device: flat search (full space), small brute force
    (centroids, PCA space) and the inverted-list scan."""

    knn: KnnFn
    knn_small: KnnFn
    scan: ScanFn

    @classmethod
    def cpu(cls) -> Kernels:
        return cls(knn_cpu, knn_small, scan_lists)

    @classmethod
    def cuda(cls) -> Kernels:
        gpu = GpuKnn()
        return cls(gpu, gpu, functools.partial(bucket_scan, knn=gpu))


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def ivf_search(
    xq: np.ndarray,
    yq: np.ndarray | None,
    probes: np.ndarray,
    lists: Lists,
    m: int,
    scan: ScanFn = scan_lists,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact search-space top-``m`` of each query among its probed lists, by (distance, id).

    Returns global ids (``-1`` padding), their float64 squared search-space distances and
    their float64 squared full distances, sorted by (search distance, id).
    """
    yq = xq if yq is None else yq
    yb = lists.search
    eps = l2_error_bound(yb.shape[1], row_norms(yq), lists.max_norm)
    sizes = np.diff(lists.lims)[probes].sum(axis=1)
    nq = yq.shape[0]
    pos = np.full((nq, m), -1, dtype=np.int64)
    key = np.full((nq, m), np.inf)
    rows, c = np.arange(nq), m + MARGIN
    while rows.size:
        approx, cand = scan(yq[rows], probes[rows], yb, lists.lims, c)
        complete = sizes[rows] <= c  # every probed point was fetched
        exact = sq_dists(yq[rows], yb, cand)
        p, d, ok = rank_certified(approx, cand, exact, m, eps[rows], lists.ids)
        ok |= complete
        pos[rows[ok]], key[rows[ok]] = p[ok], d[ok]
        rows, c = rows[~ok], 4 * c
    full = key if lists.y is None else sq_dists(xq, lists.x, pos)
    ids = np.where(pos >= 0, lists.ids[np.maximum(pos, 0)], -1)
    return ids, key, full


# ---------------------------------------------------------------- recall


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Recall@k — the mean over rows of the fraction of true neighbours (``-1`` ignored)
    present in ``found`` — and its standard error."""
    per_row = [
        np.intersect1d(f, t[t >= 0]).size / max(1, (t >= 0).sum())
        for f, t in zip(found, truth, strict=True)
    ]
    if not per_row:
        return 1.0, 0.0
    r = np.asarray(per_row)
    return float(r.mean()), float(r.std(ddof=1) / np.sqrt(r.size)) if r.size > 1 else 0.0
