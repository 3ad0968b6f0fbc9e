"""IVF for kNN graphs: k-means lists, per-list probes, recall measured without searching.

The queries are the database, so the search is organised by list, like a blocked
all-pairs join: every row is assigned to its nearest centroid (certified, so lists never
depend on batching), and all rows of list ``A`` are searched together against the rows of
the ``nprobe`` lists whose centroids are nearest to ``A``'s centroid (``A`` first). Each
(``A``, ``B``) pair is one sgemm on contiguous rows (:mod:`d2scale.graph.scan`): no gathers,
no per-query bookkeeping. The search is exact over the probed rows, so a true neighbour is
found exactly when its list is probed: recall@k for any ``nprobe`` follows from the exact
neighbours of held-out rows and the lists alone (:func:`recall_curve`), and tuning costs no
search at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from d2scale.blas import load_faiss
from d2scale.errors import D2ScaleError
from d2scale.graph import scan

try:  # loaded first (before torch, say): its OpenBLAS then honours the BLAS thread limits
    faiss = load_faiss()
except ImportError:  # the torch engine needs none of faiss: a GPU machine may lack it
    faiss = None

PCA_ENERGY = 0.9  # variance kept by the automatic PCA search space
PCA_ROWS = 20_000  # rows used to fit the PCA
BOUND_SAMPLE_ROWS = 8192  # sample rows per sgemm when bounding the evaluation rows' neighbours
MAX_NPROBE = 512
PROBE_CAP = 48  # per-row probing: the most lists a row may probe (its nearest, kept per row)
PROBE_FIRST = 32  # ... of which the assignment ranks this many (more: a pass after tuning)
NEAREST_BYTES = 32 << 20  # distances to the centroids computed at a time (per task)
MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid
KMEANS_ITER = 10


def choose_nlist(n: int) -> int:
    """About √n lists rounded to a power of two, at most n/39 (training) and 65,536.

    Assignment costs n·nlist distances and the scan n·nprobe·n/nlist: their sum is smallest
    near nlist = √(nprobe·n); measured best at ~√n to 2√n with sgemm scans.
    """
    target = 1.5 * math.sqrt(n)
    nlist = 2 ** round(math.log2(max(target, 1)))
    return int(max(1, min(nlist, n // MIN_POINTS_PER_LIST, 65536)))


def nprobe_grid(nlist: int) -> list[int]:
    """Candidate ``nprobe`` values tried by the recall tuning, ascending (at most
    ``MAX_NPROBE``: beyond it a larger ``nlist`` or exact search is the better choice)."""
    top = min(nlist, MAX_NPROBE)
    grid = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32]  # then steps of ~1/8
    while grid[-1] < top:
        grid.append(grid[-1] + max(1, grid[-1] // 8))
    return [p for p in grid if p < top] + [top]


# ---------------------------------------------------------------- PCA search space


@dataclass(frozen=True)
class Projection:
    """``y = (x − mean) @ components`` in float32, summed in a fixed order (so every row's
    projection is the same whatever batch it comes in)."""

    mean: np.ndarray  # (d,) float32
    components: np.ndarray  # (d, d') float32, orthonormal columns

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.dim), dtype=np.float32)
        if x.shape[0]:
            _project(np.ascontiguousarray(x, dtype=np.float32), self.mean, self.components, out)
        return out


@njit(cache=True, nogil=True)
def _project(x, mean, w, out):
    # over input dims in a fixed order, vectorised across output dims (no reassociation)
    n, d = x.shape
    dp = w.shape[1]
    acc = np.empty(dp, dtype=np.float32)
    for i in range(n):
        acc[:] = 0.0
        for t in range(d):
            v = x[i, t] - mean[t]
            for j in range(dp):
                acc[j] += v * w[t, j]
        out[i, :] = acc


def fit_pca(sample: np.ndarray, energy: float = PCA_ENERGY, multiple: int = 16):
    """PCA keeping ``energy`` of the variance (dims rounded up to ``multiple``); None when
    that needs more than half the dimensions (no speed-up worth the re-ranking)."""
    sample = sample[:PCA_ROWS]
    if sample.shape[0] < 2:
        return None
    mean = sample.mean(axis=0, dtype=np.float64)
    xc = np.empty(sample.shape, dtype=np.float32)
    for a in range(0, sample.shape[0], 2048):  # centred in float64 by row blocks (no n×d copy)
        xc[a : a + 2048] = sample[a : a + 2048] - mean
    cov = (xc.T @ xc).astype(np.float64) / max(1, xc.shape[0] - 1)
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1].clip(0), evecs[:, ::-1]
    share = np.cumsum(evals) / max(evals.sum(), 1e-300)
    d = sample.shape[1]
    dim = min(d, multiple * math.ceil(int(np.searchsorted(share, energy) + 1) / multiple))
    if dim > d // 2:
        return None
    comps = np.ascontiguousarray(evecs[:, :dim], dtype=np.float32)
    return Projection(mean.astype(np.float32), comps)


def neighbour_bound(x_eval: np.ndarray, sample: np.ndarray, keep: int) -> np.ndarray:
    """For each evaluation row, the exact squared distance of its ``keep``-th nearest row of
    ``sample`` (rows of the pool; ``inf`` when it has fewer): no row farther than that can be
    among its ``keep`` nearest rows of the whole pool."""
    step = BOUND_SAMPLE_ROWS
    tops = [scan.topk(x_eval, sample[a : a + step], [(0, min(step, sample.shape[0] - a))], keep)
            for a in range(0, sample.shape[0], step)]  # fmt: skip
    if not tops:
        return np.full(x_eval.shape[0], np.inf)
    return scan.merge([(np.where(p >= 0, p + i * step, -1), d) for i, (p, d) in
                       enumerate(tops)], keep)[1][:, keep - 1]  # fmt: skip


def eval_neighbours(
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    keep: tuple[int, int],
    projection: Projection | None,
    bound: np.ndarray | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """For the evaluation rows, their exact top-``keep[0]`` among the rows ``x`` by full
    distance — or, with ``bound`` (:func:`neighbour_bound`), all of those that may be among their
    top-``keep[0]`` of the whole pool — and their exact top-``keep[1]`` by search-space
    distance (positions, squared distances; as :func:`scan.topk`).

    The full-space top comes from the search-space one where that is certain: a projection
    onto orthonormal directions never lengthens a difference, so a search-space distance
    (less the projection's float32 error) bounds the full one from below. Only candidates
    whose lower bound is within ``bound`` are re-ranked, and a row is certified when every
    row past its last candidate is farther than ``bound`` or than its ``keep[0]``-th
    re-ranked neighbour. Only the rows not so certified are searched in full.
    """
    cands = scan.topk(y_eval, y, [(0, y.shape[0])], keep[1])
    if projection is None:  # the search space is the full space
        return (cands[0][:, : keep[0]], cands[1][:, : keep[0]]), cands
    # |projected distance error| ≤ γ_d·√d'·(‖x_q − μ‖ + ‖x_b − μ‖) (float32 sums, unit w)
    gamma = (x.shape[1] + 3) * 2.0**-24 / (1 - (x.shape[1] + 3) * 2.0**-24)
    widest = (
        np.sqrt(float(scan.norms2(x).max(initial=0.0))) + float(np.linalg.norm(projection.mean))
    ) * 1.01  # ≥ ‖x_b − μ‖
    slack = gamma * np.sqrt(projection.dim) * (_centred_norms(x_eval, projection.mean) + widest)
    lower = np.sqrt(cands[1]) - slack[:, None]  # full distance ≥ this (inf: no candidate)
    beyond = lower[:, -1]  # ... and every row not among the candidates is at least this far
    ub = np.full(x_eval.shape[0], np.inf) if bound is None else np.sqrt(bound) * (1 + 1e-9)
    near = np.where(lower <= ub[:, None], cands[0], -1)
    pos, d2 = scan.rerank(x_eval, x, near, np.arange(x.shape[0]), keep[0])
    sure = (cands[0][:, -1] < 0) | (beyond > ub) | (np.sqrt(d2[:, -1]) < beyond)
    if not sure.all():
        rest = np.flatnonzero(~sure)
        pos[rest], d2[rest] = scan.topk(x_eval[rest], x, [(0, x.shape[0])], keep[0])
    return (pos, d2), cands


def _centred_norms(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Upper bounds of ``‖x_i − mean‖``: float32 sums (relative error < d·2⁻²³ ≪ the 1%
    margin added), computed block by block without a float64 copy of ``x``."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for a in range(0, x.shape[0], 4096):
        c = x[a : a + 4096] - mean
        out[a : a + 4096] = np.sqrt(np.einsum("ij,ij->i", c, c))
    return out * 1.01


# ---------------------------------------------------------------- lists


def train_centroids(sample: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """k-means centroids (float32, ``nlist`` × d) of a training sample, seeded."""
    if faiss is None:
        raise D2ScaleError(
            "the compiled graph engine needs faiss (pip install faiss-cpu); "
            "use --graph-engine torch"
        )

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


def assign(x: np.ndarray, centroids: np.ndarray, ip: scan.IpFn = scan.ip_cpu) -> np.ndarray:
    """Nearest centroid of each row (int32), by exact distance then centroid id."""
    pos, _ = scan.topk(x, centroids, [(0, centroids.shape[0])], 1, ip=ip)
    return pos[:, 0].astype(np.int32)


def probe_cap(nlist: int) -> int:
    """How many nearest lists the assignment keeps per row (the largest per-row ``nprobe``)."""
    return int(min(nlist, PROBE_CAP))


def nearest_lists(x: np.ndarray, centroids: np.ndarray, p: int) -> np.ndarray:
    """The ``p`` nearest lists of each row, nearest first, by exact distance then list id
    (uint16 when the ids fit, else int32): the first column is the row's list. Rows are
    ranked ``NEAREST_BYTES`` of distances at a time (each row's result is its own)."""
    nlist = centroids.shape[0]
    out = np.empty((x.shape[0], min(p, nlist)), list_dtype(nlist))
    aug = scan.augment(centroids)
    step = max(1, NEAREST_BYTES // (4 * nlist))
    for a in range(0, x.shape[0], step):
        out[a : a + step] = scan.topk(x[a : a + step], None, [(0, nlist)], out.shape[1],
                                      aug=aug)[0]  # fmt: skip
    return out


def list_dtype(nlist: int) -> type:
    """The dtype of list ids: uint16 when they fit, else int32."""
    return np.uint16 if nlist <= 65536 else np.int32


def probe_table(centroids: np.ndarray, nprobe: int, lists: np.ndarray | None = None) -> np.ndarray:
    """The ``nprobe`` nearest lists of each list's centroid (int32), the list itself first,
    then by (exact distance, id); ``lists``: only these rows of the table (default: all)."""
    nlist = centroids.shape[0]
    lists = np.arange(nlist) if lists is None else np.asarray(lists, dtype=np.int64)
    pos, _ = scan.topk(centroids[lists], centroids, [(0, nlist)], min(nprobe, nlist))
    pos = pos.astype(np.int32)
    for i in np.flatnonzero(pos[:, 0] != lists):  # an equal centroid with a lower id
        others = pos[i][pos[i] != lists[i]]
        pos[i] = np.concatenate([[lists[i]], others])[: pos.shape[1]]
    return pos


def recall_curve(
    truth: np.ndarray,
    cands: np.ndarray,
    eval_lists: np.ndarray,
    lists: np.ndarray,
    centroids: np.ndarray,
    grid: list[tuple[int, int]],
) -> dict[tuple[int, int], tuple[float, float]]:
    """Recall@k (mean, standard error) of the evaluation rows for each (nprobe, m) of grid
    when every row probes the lists nearest to *its list's* centroid (:func:`probe_table`).

    ``truth``: their exact neighbours; ``cands``: their exact search-space top-M over all
    rows, in order (global ids, ``-1`` padding; with exact duplicates: both given as
    representatives, repeats in ``cands`` set to ``-1``); ``lists``: every row's list. The search
    takes a query's exact search-space top-``m`` among the rows of its ``nprobe`` probed
    lists and re-ranks them exactly, so it finds a true neighbour iff that neighbour is among
    the first ``m`` entries of ``cands`` lying in probed lists (entries beyond M count as
    misses: a lower bound).
    """
    nlist = centroids.shape[0]
    uniq, inv = np.unique(eval_lists, return_inverse=True)
    table = probe_table(centroids, max(p for p, _ in grid), uniq)
    return recall_from_probes(truth, cands, table, inv, lists, nlist, grid)


def recall_from_probes(
    truth: np.ndarray,
    cands: np.ndarray,
    probes: np.ndarray,
    row_of: np.ndarray,
    lists: np.ndarray,
    nlist: int,
    grid: list[tuple[int, int]],
) -> dict[tuple[int, int], tuple[float, float]]:
    """As :func:`recall_curve` for any probing: evaluation row ``i`` probes the first
    ``nprobe`` lists of ``probes[row_of[i]]`` (lists in probing order)."""
    probes = np.asarray(probes, dtype=np.int64)
    rank = np.full((probes.shape[0], nlist), nlist, dtype=np.int32)  # rank[u, B]: B's rank
    np.put_along_axis(rank, probes, np.arange(probes.shape[1], dtype=np.int32)[None, :], axis=1)
    c_rank = np.where(cands >= 0, rank[row_of[:, None], lists[np.maximum(cands, 0)]], nlist)
    valid = truth >= 0
    # where each true neighbour is among the candidates (at most once: repeats are -1)
    match = (truth[:, :, None] == cands[:, None, :]) & valid[:, :, None]
    listed, at = match.any(axis=2), match.argmax(axis=2)
    t_rank = np.where(listed, np.take_along_axis(c_rank, at, axis=1), nlist)
    n_valid = np.maximum(valid.sum(axis=1), 1)
    out = {}
    for p in sorted({p for p, _ in grid}):
        probed = c_rank < p  # a candidate is kept while fewer than m probed ones precede it
        place = np.take_along_axis(np.cumsum(probed, axis=1), at, axis=1)
        for m in [m for q, m in grid if q == p]:
            per_row = ((t_rank < p) & (place <= m)).sum(axis=1) / n_valid
            se = per_row.std(ddof=1) / np.sqrt(per_row.size) if per_row.size > 1 else 0.0
            out[(p, m)] = (float(per_row.mean()) if per_row.size else 1.0, float(se))
    return out


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


def list_order(centroids: np.ndarray, seed: int) -> np.ndarray:
    """An order of the lists that keeps near centroids together (for shards): lists sorted
    by their nearest of ~√nlist coarse k-means centres, then by id."""
    nlist = centroids.shape[0]
    groups = max(1, int(math.sqrt(nlist)))
    if groups == 1:
        return np.arange(nlist)
    coarse = train_centroids(centroids, groups, seed)
    label = assign(centroids, coarse)
    return np.lexsort((np.arange(nlist), label))
