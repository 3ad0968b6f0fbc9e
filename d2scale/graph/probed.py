"""Per-row probing: every row searches the ``nprobe`` lists nearest to *itself*.

Probing the lists nearest to a row's list centroid (:mod:`d2scale.graph.ivf`) lets all rows
of a list share one set of probed lists, but rows near a list's border then need many
probes: on real sentence embeddings (broad clusters) recall 0.95 needed ~137 of 512 lists
that way against ~22 per row. Here each row probes its own nearest lists (kept by the
assignment pass), and the blocked sgemm is kept by grouping the queries of a task by list:
for each list ``B``, the queries that probe ``B`` are multiplied against ``B``'s contiguous
rows in one sgemm and folded into their heaps. The result of every row is still its exact
(certified) search-space top-``m`` among the rows it probes — what it probes depends only on
the row itself — so the graph does not depend on chunks, shards or workers.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from d2scale.graph import ivf, scan
from d2scale.graph.scan import _fold_row
from d2scale.graph.shards import Shard, extract_part, single_threaded

_NO_ID = np.iinfo(np.int64).max
QUERY_TILE = 256  # queries per sgemm: their distances to one list stay in the L2 cache


@njit(cache=True, nogil=True)
def _select_rows(part, qn, pos0, heap_d, heap_i, rows):
    """Fold ``qn[t] + part[t]`` (positions from ``pos0``) into heap row ``rows[t]``."""
    for t in range(part.shape[0]):
        _fold_row(heap_d[rows[t]], heap_i[rows[t]], qn[t], part[t], pos0)


def probe_part(source, part: int, projection, centroids: np.ndarray, nprobe: int) -> np.ndarray:
    """Task: the ``nprobe`` nearest lists of every row of partition ``part``. ``source``: the
    partition's assignment result holding its rows, its search-space rows, or the blocks."""
    single_threaded()
    if isinstance(source, dict):  # rows kept by the assignment
        y = source["rows"]
    elif isinstance(source, np.ndarray):  # spilled search-space rows
        y = source
    else:
        local = np.arange(source.sizes[part])
        y = extract_part(source, part, 0, local, np.zeros(local.size, np.int32), projection)[1]
    return ivf.nearest_lists(y, centroids, nprobe)


def union_table(lists: np.ndarray, probes: np.ndarray, nlist: int) -> np.ndarray:
    """For each list, the lists probed by any of its rows (int32, ascending, ``-1`` padded):
    what a shard answering that list must hold."""
    if nlist <= 8192:  # a dense (list, probed list) mask: no sort of all the pairs
        mask = np.zeros((nlist, nlist), dtype=bool)
        for col in range(probes.shape[1]):
            mask[lists, probes[:, col]] = True
        a, b = np.nonzero(mask)
    else:
        pairs = scan.unique_sorted(lists.astype(np.int64) * nlist + probes.astype(np.int64).T)
        a, b = pairs // nlist, pairs % nlist
    width = int(np.bincount(a, minlength=nlist).max()) if a.size else 1
    table = np.full((nlist, max(width, 1)), -1, dtype=np.int32)
    start = np.searchsorted(a, np.arange(nlist))
    table[a, np.arange(a.size) - start[a]] = b
    return table


def topk_probed(
    shard: Shard,
    q: np.ndarray,
    probes: np.ndarray,
    keep: int,
    ip: scan.IpFn = scan.ip_cpu,
    margin: int = scan.MARGIN,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search-space top-``keep`` of the shard rows ``q`` among the rows of their own
    probed lists (``probes[t]`` for row ``q[t]``): shard positions (``-1`` padding) and
    squared distances, by (distance, id) — certified as :func:`scan.topk` does."""
    aug, ds = shard.aug, shard.aug.shape[1] - 1
    nq, p = probes.shape
    xq = shard.search_rows(q)
    qn = scan.norms2(xq)
    qa = np.concatenate([xq, np.ones((nq, 1), np.float32)], axis=1)
    starts = np.where(shard.at >= 0, shard.lims[np.maximum(shard.at, 0)], 0)
    ends = np.where(shard.at >= 0, shard.lims[np.maximum(shard.at, 0) + 1], 0)
    total = (ends - starts)[probes].sum(axis=1)
    max_b = float(np.sqrt(aug[:, -1].max())) if aug.shape[0] else 0.0
    eps = scan.l2_error_bound(ds + 1, np.sqrt(qn.astype(np.float64)), max_b)
    pos = np.full((nq, keep), -1, dtype=np.int64)
    dist = np.full((nq, keep), np.inf)
    rows, c = np.arange(nq), keep + margin
    while rows.size:
        c = int(min(c, total[rows].max()))
        heap_d = np.full((rows.size, c), np.inf, dtype=np.float32)
        heap_i = np.full((rows.size, c), -1, dtype=np.int64)
        flat = probes[rows].ravel()
        order = np.argsort(flat, kind="stable")  # by list, then by row
        bounds = np.flatnonzero(np.diff(flat[order])) + 1
        for grp in np.split(order, bounds):
            lst = int(flat[grp[0]])
            a, b = int(starts[lst]), int(ends[lst])
            for s in range(0, grp.size if b > a else 0, QUERY_TILE):
                who = grp[s : s + QUERY_TILE] // p  # a tile: its distances stay in cache
                _select_rows(ip(qa[rows[who]], aug[a:b]), qn[rows[who]], a, heap_d, heap_i, who)
        exact = np.empty(heap_i.shape)
        scan._exact(qa[rows], aug, heap_i, exact, np.float64(-0.5), ds)
        gid = np.where(heap_i >= 0, shard.ids[np.maximum(heap_i, 0)], _NO_ID)
        pp = np.full((rows.size, keep), -1, dtype=np.int64)
        dd = np.full((rows.size, keep), np.inf)
        scan._rank(heap_i, exact, gid, keep, pp, dd)
        ok = (c >= total[rows]) | (heap_i[:, -1] < 0)
        ok |= dd[:, keep - 1] < heap_d[:, -1].astype(np.float64) - eps[rows]
        pos[rows[ok]], dist[rows[ok]] = pp[ok], dd[ok]
        rows, c = rows[~ok], 4 * c
    return pos, dist


def search_rows(
    shard: Shard, items: list, probes: np.ndarray, m: int, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the queries ``items`` — (list, first, end) row ranges within a list — the exact
    search-space top-``m`` among the rows of their own probed lists (``probes[global id]``):
    (query ids, neighbour ids, d²), as :func:`d2scale.graph.shards.search_lists`."""
    single_threaded()
    spans = [shard.span(lst) for lst, _, _ in items]
    q = np.concatenate([np.arange(s0 + a, s0 + b) for (s0, _), (_, a, b) in
                        zip(spans, items, strict=True)] or [np.empty(0, np.int64)])  # fmt: skip
    if q.size == 0:
        return np.empty(0, np.int64), np.empty((0, m), np.int64), np.empty((0, m))
    ids = shard.ids[q]
    pos, d2 = topk_probed(shard, q, np.asarray(probes[ids], dtype=np.int64), m,
                          scan.ip_for(device))  # fmt: skip
    return ids, np.where(pos >= 0, shard.ids[np.maximum(pos, 0)], -1), d2
