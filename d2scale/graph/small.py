"""Exact search of a pool that fits one shard, through a PCA space: the exact index's graph
at a fraction of the brute-force cost.

Brute force costs one sgemm over the full dimensions (the pool's Gram matrix). Here the rows
are projected onto a few principal directions ``W`` (a randomized range finder on a seeded
sample: any orthonormal-ish ``W`` gives the same graph, only the speed depends on it) and
each block of queries is searched in that space by one sgemm of ``d'`` columns:

1. the search-space top ``keep + MARGIN`` rows of every query, re-ranked by exact distance,
   give an upper bound ``U`` of its ``keep``-th exact distance;
2. a projection never lengthens a difference by more than ``σ = ‖W‖₂``, and the float32
   projection and sgemm errors are bounded (:func:`_row_errors`, :func:`scan.l2_error_bound`),
   so every row whose search-space distance exceeds ``σ·U`` plus those errors is provably
   farther than ``U``: all other rows are re-ranked (float32 distances with the sgemm's
   error bound, then the exact kernel of :func:`scan.topk` for the best, certified as it
   certifies) and ranked by (distance, id). A tile of queries with so many such rows that
   brute force costs less is searched by :func:`scan.topk` over the whole shard instead.

The result is the exact top-``keep`` by the same float64 distances and the same order as the
exact index (:func:`d2scale.graph.shards.search_lists` over the same shard): the same graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from d2scale.graph import ivf, scan
from d2scale.graph.shards import Shard, search_lists, single_threaded

MIN_ROWS = 4096  # below this brute force is cheap: the shard is searched as it is
SAMPLE_ROWS = 1024  # rows of the seeded sample the directions are found from
MAX_WIDTH = 256  # directions tried at most (then ranked; those keeping the energy are used)
QUERY_TILE = 128  # queries per sgemm: their distances to all rows stay in cache
PROJECT_ROWS = 2048  # rows centred and projected at a time
CELL_ROWS = 256  # rows per cell (seeded pivots): a chunk's queries are searched cell by cell
CANDIDATE_COST = 16  # a re-ranked candidate costs about this many rows of a brute-force sgemm
_SAFETY = 1e-6  # relative margin over float64 rounding of the exact distances


@dataclass
class Space:
    """The search space of a shard: rows projected and augmented (:func:`scan.augment`), each
    row's bound on its projection error, and ``σ`` ≥ the largest singular value of ``W``."""

    aug: np.ndarray
    err: np.ndarray
    sigma: float
    cells: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.aug.shape[1] - 1)


@dataclass
class Basis:
    """The projection ``y = (x − mean) @ w``, ``σ`` ≥ the largest singular value of ``w``,
    and the seed of the cells' pivots."""

    mean: np.ndarray
    w: np.ndarray
    sigma: float
    seed: int = 0


def fit_basis(shard: Shard, seed: int, energy: float = ivf.PCA_ENERGY) -> Basis | None:
    """Task: principal directions of a seeded sample of ``shard``'s rows keeping ``energy``
    of its variance; None when the shard is small or that needs over half the dimensions."""
    single_threaded()
    n, d = shard.aug.shape[0], shard.aug.shape[1] - 1
    if n < MIN_ROWS or d < 32:
        return None
    rng = np.random.default_rng(seed)
    sample = shard.search_rows(np.sort(rng.choice(n, min(n, SAMPLE_ROWS), replace=False)))
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    w = _directions(sample - mean, energy, min(d // 2, MAX_WIDTH), rng)
    return None if w is None else Basis(mean, w, _sigma(w), seed)


def project(shard: Shard, basis: Basis | None, a: int, b: int) -> tuple | None:
    """Task: shard rows ``a:b`` in the search space (augmented) and their projection errors."""
    if basis is None:
        return None
    single_threaded()
    y = np.empty((b - a, basis.w.shape[1]), np.float32)
    norms = np.empty(b - a)
    for s in range(a, b, PROJECT_ROWS):  # each block centred once, for both
        e = min(b, s + PROJECT_ROWS)
        c = shard.search_rows(slice(s, e)) - basis.mean
        y[s - a : e - a] = c @ basis.w
        norms[s - a : e - a] = np.sqrt(np.einsum("ij,ij->i", c, c))
    return scan.augment(y), _row_errors(norms, basis.w)


def join(basis: Basis | None, pieces: list) -> Space | None:
    """Task: the :class:`Space` of the projected pieces, in row order."""
    if basis is None:
        return None
    single_threaded()
    aug = np.concatenate([p[0] for p in pieces])
    err = np.concatenate([p[1] for p in pieces])
    return Space(aug, err, basis.sigma, _cells(aug, basis.seed))


def _cells(aug: np.ndarray, seed: int) -> np.ndarray:
    """Each row's nearest of ``n / CELL_ROWS`` seeded pivot rows in the search space: the
    queries of one cell share most of their candidates. (Only the order in which queries
    are searched depends on it, never the result.)"""
    n = aug.shape[0]
    pivots = np.sort(
        np.random.default_rng([seed, 1]).choice(n, max(1, n // CELL_ROWS), replace=False)
    )
    y_p, norms_p = aug[pivots, :-1] * np.float32(-0.5), aug[pivots, -1]
    cells = np.empty(n, np.int32)
    for a in range(0, n, 8192):  # ‖p‖² − 2y·p: the squared distance less ‖y‖²
        cells[a : a + 8192] = np.argmin(aug[a : a + 8192, :-1] @ y_p.T + norms_p, axis=1)
    return cells


def fit_space(shard: Shard, seed: int, energy: float = ivf.PCA_ENERGY) -> Space | None:
    """:func:`fit_basis`, :func:`project` and :func:`join` in one call."""
    basis = fit_basis(shard, seed, energy)
    return join(basis, [project(shard, basis, 0, shard.aug.shape[0])])


def _directions(c: np.ndarray, energy: float, width: int, rng) -> np.ndarray | None:
    """Orthonormal directions (float32, d × d') of the centred sample ``c`` keeping ``energy``
    of its variance: a randomized range finder (one power iteration), then the Ritz vectors
    ranked; None when ``width`` directions do not keep it."""
    total = float(np.einsum("ij,ij->", c, c, dtype=np.float64))
    if width < 16 or total <= 0:
        return None
    omega = rng.standard_normal((c.shape[1], width)).astype(np.float32)
    q = np.linalg.qr(c.T @ (c @ omega))[0]  # d × width, the sample's dominant range
    b = (c @ q).astype(np.float64)
    vals, vecs = np.linalg.eigh(b.T @ b)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    share = np.cumsum(vals) / total
    if share[-1] < energy:
        return None
    dim = min(width, 16 * math.ceil((int(np.searchsorted(share, energy)) + 1) / 16))
    return np.ascontiguousarray(q.astype(np.float64) @ vecs[:, :dim], dtype=np.float32)


def _row_errors(norms: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row, a bound on ‖ŷ − Wᵀ(x − μ)‖ for ŷ the float32 ``(x − mean) @ w``, from the
    rows' float32 ``‖x − mean‖`` (``norms``; relative error < d·2⁻²³ ≪ the 1% margin added):
    each entry errs by at most γ_{d+2}·Σ|x_t − μ_t||w_tj| ≤ γ·‖x − μ‖·‖w_j‖ whatever the
    summation order, so the row by at most γ·‖x − μ‖·‖W‖_F."""
    d = w.shape[0]
    gamma = (d + 3) * 2.0**-24 / (1 - (d + 3) * 2.0**-24)
    frob = float(np.sqrt(np.einsum("ij,ij->", w, w, dtype=np.float64)))
    return gamma * frob * (norms * 1.01) * 1.01  # the float32 norms, then a margin


def _sigma(w: np.ndarray) -> float:
    """An upper bound of ``‖W‖₂`` (so ‖Wᵀv‖ ≤ σ‖v‖ for every v)."""
    return float(np.linalg.norm(w.astype(np.float64), 2)) * (1 + 1e-9)


def search_chunk(
    shard: Shard, space: Space | None, items: list, table: np.ndarray, m: int, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task: as :func:`d2scale.graph.shards.search_lists` over a one-list shard (the exact
    index), through ``space`` when there is one: (query ids, neighbour ids, distances²)."""
    if space is None:
        return search_lists(shard, items, table, m, device)
    single_threaded()
    ip = scan.ip_for(device)
    q = np.concatenate([np.arange(shard.span(lst)[0] + a, shard.span(lst)[0] + b)
                        for lst, a, b in items] or [np.empty(0, np.int64)])  # fmt: skip
    pos = np.full((q.size, m), -1, np.int64)
    d2 = np.full((q.size, m), np.inf)
    by_cell = np.argsort(space.cells[q], kind="stable")  # a tile's queries share candidates
    norms = (shard.aug[:, -1].max(), space.aug[:, -1].max())  # once: strided column reads
    bounds = (float(np.sqrt(norms[0])), float(np.sqrt(norms[1])), float(space.err.max()))
    for s in range(0, q.size, QUERY_TILE):
        t = by_cell[s : s + QUERY_TILE]
        pos[t], d2[t] = _search_tile(shard, space, q[t], m, ip, bounds)
    nbr = np.where(pos >= 0, shard.ids[np.maximum(pos, 0)], -1)
    return shard.ids[q], nbr, d2


def _search_tile(
    shard: Shard, space: Space, q: np.ndarray, keep: int, ip: scan.IpFn, bounds: tuple
) -> tuple:
    """Exact top-``keep`` (shard positions, distances²) of the shard rows ``q``; ``bounds``:
    the largest row norm of the shard and of the space, the largest projection error."""
    max_x, max_y, max_err = bounds
    xq = shard.search_rows(q)
    qa = np.concatenate([xq, np.ones((q.size, 1), np.float32)], axis=1)
    xn = scan.norms2(xq)
    eps = scan.l2_error_bound(xq.shape[1] + 1, np.sqrt(xn.astype(np.float64)), max_x)
    yq = space.aug[q, :-1] * np.float32(-0.5)  # exact: the projected rows
    yn = scan.norms2(yq)
    part = ip(np.concatenate([yq, np.ones((q.size, 1), np.float32)], axis=1), space.aug)
    c = min(keep + scan.MARGIN, part.shape[1])
    heap_d = np.full((q.size, c), np.inf, np.float32)
    heap_i = np.full((q.size, c), -1, np.int64)
    scan._select(part, yn, 0, heap_d, heap_i)
    first = np.sort(_full_d2(qa, xn, shard.aug, heap_i), axis=1)[:, keep - 1]
    upper = np.sqrt(np.maximum(first + eps, 0.0)) * (1 + _SAFETY)  # ≥ the keep-th distance
    y_eps = scan.l2_error_bound(space.dim + 1, np.sqrt(yn.astype(np.float64)), max_y)
    radius = space.sigma * upper + space.err[q] + max_err
    limit = np.where(np.isfinite(upper), radius**2 + y_eps, np.inf)
    cand, counts = _within(part, yn, limit, max(keep, part.shape[1] // CANDIDATE_COST))
    if counts.mean() * CANDIDATE_COST > part.shape[1]:  # brute force costs less: the same
        return scan.topk(xq, None, [(0, part.shape[1])], keep, shard.ids, ip, aug=shard.aug)
    width = max(int(counts.max()), keep)
    if width > cand.shape[1]:
        cand = _within(part, yn, limit, width)[0]
    return _certified(shard, qa, xn, eps, np.ascontiguousarray(cand[:, :width]), keep)


def _certified(shard: Shard, qa, xn, eps, cand: np.ndarray, keep: int) -> tuple:
    """The best ``keep`` of the candidates ``cand`` by (exact distance, id): the best
    ``keep + MARGIN`` by float32 distance re-ranked exactly, certified as :func:`scan.topk`
    certifies (else all of the row's candidates re-ranked)."""
    fd = _full_d2(qa, xn, shard.aug, cand)
    c = min(keep + scan.MARGIN, cand.shape[1])
    heap_d = np.full((cand.shape[0], c), np.inf, np.float32)
    heap_i = np.full((cand.shape[0], c), -1, np.int64)
    scan._select(fd, np.zeros(cand.shape[0], np.float32), 0, heap_d, heap_i)
    near = np.where(heap_i >= 0, np.take_along_axis(cand, np.maximum(heap_i, 0), axis=1), -1)
    pos, dist = _ranked(shard, qa, near, keep)
    rest = np.flatnonzero(
        (c < cand.shape[1]) & (heap_i[:, -1] >= 0) & ~(dist[:, -1] < heap_d[:, -1] - eps)
    )
    if rest.size:
        pos[rest], dist[rest] = _ranked(shard, qa[rest], cand[rest], keep)
    return pos, dist


def _full_d2(qa: np.ndarray, xn: np.ndarray, aug: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """float32 squared distances ‖x‖² + ‖b‖² − 2x·b of each query and its candidates (inf
    for ``-1``): the arithmetic of the sgemm in :func:`scan.topk`, so its error bound. The
    pairs are taken candidate by candidate (a tile's queries share most candidates: each
    candidate row is read from memory once, the tile's queries stay in cache)."""
    out = np.full(cand.shape, np.inf, np.float32)
    flat = cand.ravel()
    pairs = np.flatnonzero(flat >= 0)
    pairs = pairs[np.argsort(flat[pairs], kind="stable")]
    _pair_f32(qa, xn, aug, flat, pairs, cand.shape[1], out.ravel())
    return out


def _ranked(shard: Shard, qa: np.ndarray, cand: np.ndarray, keep: int) -> tuple:
    """The best ``keep`` of the candidate positions ``cand`` by (exact distance, id), with the
    kernel and arguments of :func:`scan.topk` (so the same float64 distances)."""
    exact = np.empty(cand.shape)
    scan._exact(qa, shard.aug, cand, exact, np.float64(-0.5), qa.shape[1] - 1)
    gid = np.where(cand >= 0, shard.ids[np.maximum(cand, 0)], np.iinfo(np.int64).max)
    pos = np.full((cand.shape[0], keep), -1, np.int64)
    dist = np.full((cand.shape[0], keep), np.inf)
    scan._rank(cand, exact, gid, keep, pos, dist)
    return pos, dist


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _pair_f32(qa, xn, aug, flat, pairs, width, out):
    d = aug.shape[1] - 1
    for f in pairs:
        i, p = f // width, flat[f]
        s = np.float32(0.0)
        for t in range(d):
            s += qa[i, t] * aug[p, t]
        out[f] = xn[i] + (s + aug[p, d])


def _within(part: np.ndarray, yn: np.ndarray, limit: np.ndarray, width: int) -> tuple:
    """(positions, -1 padded to ``width`` columns; their number) of each query's rows whose
    search-space distance ``yn + part`` is within ``limit``, in one pass."""
    cand = np.full((part.shape[0], width), -1, np.int64)
    counts = np.empty(part.shape[0], np.int64)
    _fill_within(part, yn, limit, cand, counts)
    return cand, counts


@njit(cache=True, nogil=True)
def _fill_within(part, qn, limit, cand, counts):
    width = cand.shape[1]
    for i in range(part.shape[0]):
        c = 0
        bar = limit[i] - qn[i]
        for j in range(part.shape[1]):
            if part[i, j] <= bar:
                if c < width:
                    cand[i, c] = j
                c += 1
        counts[i] = c


def space_dim(space: Space | None) -> int | None:
    """Task: the dimensions of ``space`` (None: the shard is searched as it is)."""
    return None if space is None else space.dim
