"""The Dask tasks of a graph build, and the shards they search.

Every task is single-threaded (BLAS limited to one thread, compiled kernels serial and
``nogil``), so a cluster with ``T`` threads runs ``T`` tasks on ``T`` cores — never ``T²``
threads — and ``--memory-limit`` bounds what those tasks hold. Tasks read embeddings from
the source themselves (chunk by chunk) and *return* their results; nothing is written to
driver-chosen paths, so workers need no shared filesystem.

A *shard* is a set of IVF lists (queries) together with every list they probe, held as
contiguous rows sorted by (list, id): each query list is answered by exactly one shard, so
shards never need merging and their number does not change the graph.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from d2scale.graph import dedup, ivf, rerank, scan
from d2scale.types import EmbeddingBlocks

CHUNK_BYTES = 8 << 20  # float32 bytes of the embedding chunks that tasks read at a time
_DRIVER_PID = os.getpid()


def single_threaded() -> None:
    """Limit BLAS and faiss (OpenMP) to one thread for the calling task's thread.

    In a worker process (not the driver's), BLAS is limited for good: the process runs
    only these tasks. In the driver's process the build limits BLAS around its tasks.
    """
    from d2scale.blas import load_faiss

    faiss = load_faiss()

    faiss.omp_set_num_threads(1)
    if os.getpid() != _DRIVER_PID:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")


@contextmanager
def task_client(client=None):
    """The caller's ``distributed.Client``, or an in-process cluster with one thread per core
    (every task is single-threaded)."""
    if client is not None:
        yield client
        return
    from d2scale.backends import dask_client

    with dask_client(workers=len(os.sched_getaffinity(0))) as local:
        yield local


def chunk_rows(dim: int) -> int:
    return max(256, CHUNK_BYTES // (4 * max(dim, 1)))


def iter_chunks(blocks: EmbeddingBlocks, part: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first local row, float32 rows) of partition ``part``, a bounded chunk at a time."""
    rows = chunk_rows(blocks.dim)
    chunks = getattr(blocks, "iter_chunks", None)
    if chunks is not None:
        yield from chunks(part, rows)
        return
    x = blocks.load(part)
    for s in range(0, x.shape[0], rows):
        yield s, np.ascontiguousarray(x[s : s + rows], dtype=np.float32)


def iter_rows(
    blocks: EmbeddingBlocks, part: int, local: np.ndarray
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(a, b, float32 rows local[a:b])`` of partition ``part`` for the sorted rows
    ``local``, a bounded chunk at a time (sources with ``iter_rows`` convert only those)."""
    own = getattr(blocks, "iter_rows", None)
    if own is not None:
        yield from own(part, local, chunk_rows(blocks.dim))
        return
    for s, x in iter_chunks(blocks, part):
        a, b = np.searchsorted(local, [s, s + x.shape[0]])
        if b > a:
            yield int(a), int(b), x[local[a:b] - s]


def part_rows(offsets: np.ndarray, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Group sorted global ``rows`` by partition: ``{partition: local rows}``."""
    parts = np.searchsorted(offsets, rows, side="right") - 1
    step = np.diff(parts)
    if (step < 0).any():
        raise ValueError("part_rows needs sorted rows")
    cuts = np.flatnonzero(step) + 1
    groups = zip(np.split(parts, cuts), np.split(rows, cuts), strict=True)
    return {int(p[0]): r - offsets[p[0]] for p, r in groups if p.size}


def _pick(
    blocks: EmbeddingBlocks, part: int, local: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Rows ``local`` (sorted) of partition ``part`` as float32, read chunk by chunk into
    ``out`` (default: a new array)."""
    if out is None:
        out = np.empty((local.size, blocks.dim), dtype=np.float32)
    for a, b, x in iter_rows(blocks, part, local):
        out[a:b] = x
    return out


# ---------------------------------------------------------------- tasks


def take_rows(blocks: EmbeddingBlocks, part: int, local: np.ndarray) -> np.ndarray:
    """Rows ``local`` (sorted) of partition ``part``."""
    return _pick(blocks, part, local)


def eval_bound(x_eval: np.ndarray, sample: np.ndarray, keep: int) -> np.ndarray:
    """Task: :func:`ivf.neighbour_bound` of the evaluation rows by the training sample."""
    single_threaded()
    return ivf.neighbour_bound(x_eval, sample, keep)


def assign_part(
    blocks: EmbeddingBlocks,
    part: int,
    offset: int,
    projection: ivf.Projection | None,
    centroids: np.ndarray,
    x_eval: np.ndarray,
    bound: np.ndarray | None,
    keep: tuple[int, int],
    n_probes: int,
    keep_rows: bool = False,
) -> dict:
    """One pass over partition ``part``: row hashes, each row's ``n_probes`` nearest IVF lists
    (in the search space; the first is its list), and for the evaluation rows their exact
    top-``keep[0]`` by full distance (those within ``bound``, see
    :func:`ivf.eval_neighbours`) and top-``keep[1]`` by search-space distance among its
    rows (global ids, squared distances). ``keep_rows``: also return the rows in the search
    space (projected, or the full rows when there is no projection).
    """
    single_threaded()
    n, nlist = blocks.sizes[part], centroids.shape[0]
    hashes = np.empty((n, 2), dtype=np.uint64)
    probes = np.empty((n, min(n_probes, nlist)), dtype=ivf.list_dtype(nlist))
    d_s = blocks.dim if projection is None else projection.dim
    rows = np.empty((n, d_s), dtype=np.float32) if keep_rows else None
    y_eval = x_eval if projection is None else projection(x_eval)
    truth = cands = None
    for s, x in iter_chunks(blocks, part):
        e = s + x.shape[0]
        y = x if projection is None else projection(x)
        hashes[s:e] = dedup.row_hashes(x)
        probes[s:e] = ivf.nearest_lists(y, centroids, n_probes)
        if rows is not None:
            rows[s:e] = y
        if x_eval.shape[0]:
            got_t, got_c = ivf.eval_neighbours(x_eval, y_eval, x, y, keep, projection, bound)
            truth = _fold(truth, got_t, offset + s, keep[0])
            cands = _fold(cands, got_c, offset + s, keep[1])
    return {"hashes": hashes, "probes": probes, "truth": truth, "cands": cands,
            "rows": rows}  # fmt: skip


def _fold(acc, got, first: int, keep: int):
    pos, d2 = got
    got = (np.where(pos >= 0, pos + first, -1), d2)
    return got if acc is None else scan.merge([acc, got], keep)


def pieces_from_kept(assigned: dict, local: np.ndarray, offset: int) -> tuple:
    """The rows ``local`` of an assignment that kept its rows: (ids, search-space rows,
    lists)."""
    return local + offset, assigned["rows"][local], assigned["probes"][local, 0]


def extract_part(
    blocks: EmbeddingBlocks,
    part: int,
    offset: int,
    local: np.ndarray,
    lists: np.ndarray,
    projection: ivf.Projection | None,
) -> tuple:
    """The rows ``local`` (sorted) of partition ``part`` in the search space: (ids, rows,
    lists); projected chunk by chunk, so the full rows are never held together."""
    single_threaded()
    if projection is None:
        return local + offset, _pick(blocks, part, local), lists
    y = np.empty((local.size, projection.dim), dtype=np.float32)
    for a, b, x in iter_rows(blocks, part, local):
        y[a:b] = projection(x)
    return local + offset, y, lists


@dataclass
class Shard:
    """Search-space rows of some IVF lists, sorted by (list, id): list ``l`` is rows
    ``lims[at[l]]:lims[at[l] + 1]`` (``at[l] = -1`` for lists not held), held in ``aug``
    augmented for one-sgemm distances (:func:`scan.augment`). With a PCA search space the
    candidates found are re-ranked later by :func:`rerank_streamed`."""

    ids: np.ndarray
    aug: np.ndarray
    lims: np.ndarray
    at: np.ndarray

    def search_rows(self, rows: slice) -> np.ndarray:
        return self.aug[rows, :-1] * np.float32(-0.5)  # exact: undoes the −2 of augment

    def span(self, lst: int) -> tuple[int, int]:
        i = self.at[lst]
        return int(self.lims[i]), int(self.lims[i + 1])


def build_shard(pieces: list[tuple], nlist: int) -> Shard:
    """Concatenate (ids, search-space rows, lists) pieces into a :class:`Shard`."""
    ids = np.concatenate([p[0] for p in pieces]).astype(np.int64)
    lists = np.concatenate([p[2] for p in pieces]).astype(np.int64)
    order = np.lexsort((ids, lists))
    at_row = np.empty(ids.size, dtype=np.int64)
    at_row[order] = np.arange(ids.size)
    aug = np.empty((ids.size, pieces[0][1].shape[1] + 1), dtype=np.float32)
    start = 0
    for p in pieces:  # placed, not concatenated first
        m = p[0].shape[0]
        aug[at_row[start : start + m]] = scan.augment(p[1])
        start += m
    held, first = scan.unique_sorted(lists[order], return_index=True)
    lims = np.append(first, ids.size).astype(np.int64)
    at = np.full(nlist, -1, dtype=np.int64)
    at[held] = np.arange(held.size)
    return Shard(ids[order], aug, lims, at)


def search_lists(
    shard: Shard, items: list, table: np.ndarray, m: int, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the queries ``items`` — (list, first, end) row ranges within a list — the exact
    search-space top-``m`` among the rows of their probed lists (``table[list]``): (query
    ids, neighbour ids, distances²; the final result when the search space is the full
    space)."""
    single_threaded()
    ip = scan.ip_for(device)
    out = []
    for lst, a, b in items:
        s0, _ = shard.span(lst)
        q = slice(s0 + a, s0 + b)
        spans = [shard.span(int(p)) for p in table[lst] if p >= 0 and shard.at[p] >= 0]
        pos, d2 = scan.topk(shard.search_rows(q), None, spans, m, shard.ids, ip, aug=shard.aug)
        out.append((shard.ids[q], np.where(pos >= 0, shard.ids[np.maximum(pos, 0)], -1), d2))
    if not out:
        return np.empty(0, np.int64), np.empty((0, m), np.int64), np.empty((0, m))
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))


def rerank_streamed(
    blocks: EmbeddingBlocks, offsets: np.ndarray, q_ids: np.ndarray, cand: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task: re-rank the candidates ``cand`` (global ids, ``-1`` padding) of the sorted
    queries ``q_ids`` by exact distance, streaming the pool: (query ids, neighbour ids,
    squared distances)."""
    single_threaded()
    xq = np.empty((q_ids.size, blocks.dim), dtype=np.float32)
    at = 0
    for p, local in part_rows(offsets, q_ids).items():  # read into place: no temporaries
        _pick(blocks, p, local, xq[at : at + local.size])
        at += local.size
    flat = cand.ravel()
    order = np.argsort(flat, kind="stable")
    by_id = flat[order].astype(np.int64)
    d2 = np.full(flat.size, np.inf)
    m = cand.shape[1]
    wanted = scan.unique_sorted(by_id[np.searchsorted(by_id, 0) :])
    for p, local in part_rows(offsets, wanted).items():
        for a, b, x in iter_rows(blocks, p, local):
            ids = local[a:b] + offsets[p]
            lo, hi = np.searchsorted(by_id, [ids[0], ids[-1] + 1])
            sel = order[lo:hi]
            d2[sel] = rerank.pair_d2(xq, sel // m, x, np.searchsorted(ids, by_id[lo:hi]))
    del xq
    nbr, dd = rerank.rank(cand, d2.reshape(cand.shape), keep)
    return q_ids, nbr, dd


# ---------------------------------------------------------------- planning


def plan_shards(
    order: np.ndarray, table: np.ndarray, sizes: np.ndarray, row_bytes: int, budget: int
) -> list[list[int]]:
    """Group the lists, in ``order``, into shards whose rows (own and probed lists) fit
    ``budget`` bytes; a list that alone exceeds it gets a shard of its own."""
    shards: list[list[int]] = []
    cur: list[int] = []
    held: set[int] = set()
    rows = 0
    for lst in order.tolist():
        new = {int(p) for p in table[lst] if p >= 0} - held
        extra = int(sizes[list(new)].sum()) if new else 0
        if cur and (rows + extra) * row_bytes > budget:
            shards.append(cur)
            cur, held, rows = [], set(), 0
            new = {int(p) for p in table[lst] if p >= 0}
            extra = int(sizes[list(new)].sum())
        cur.append(lst)
        held |= new
        rows += extra
    if cur:
        shards.append(cur)
    return shards


def plan_items(
    lists: list[int], sizes: np.ndarray, n_tasks: int, max_rows: int | None = None
) -> list[list[tuple[int, int, int]]]:
    """Split the query rows of ``lists`` into about ``n_tasks`` chunks (more where a chunk
    would exceed ``max_rows`` queries) of whole lists or row ranges of large lists:
    (list, first, end) items."""
    total = int(sizes[lists].sum())
    target = max(1, -(-total // max(1, n_tasks)))
    if max_rows is not None:
        target = max(1, min(target, max_rows))
    chunks: list[list[tuple[int, int, int]]] = []
    cur: list[tuple[int, int, int]] = []
    rows = 0
    for lst in lists:
        size, a = int(sizes[lst]), 0
        while a < size:  # fill the chunk up to the target exactly, splitting lists if needed
            b = min(size, a + target - rows)
            cur.append((lst, a, b))
            rows, a = rows + b - a, b
            if rows >= target:
                chunks.append(cur)
                cur, rows = [], 0
    if cur:
        chunks.append(cur)
    return chunks


def drop_self(
    ids: np.ndarray, d2: np.ndarray, self_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (wherever it ranks) and keep the first ``k`` entries."""
    is_self = ids == self_ids[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(d2, order, axis=1)
