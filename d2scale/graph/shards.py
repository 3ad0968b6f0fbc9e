"""Shards and the Dask tasks that search them, partition by partition.

A *shard* is a contiguous range of pool rows held as :class:`~d2scale.graph.ivf.Lists` (an
exact shard is a single list), sized to a memory budget. Shards are built on a worker one at
a time; every partition's queries are searched against each shard as a (partition, shard)
task; one task per partition then merges the shards' candidates into the global top-k with
global ids and drops the query itself by id. Because every rank is exact and certified
(:mod:`d2scale.graph.exact`), the result does not depend on partitioning, shard count or the
number of workers.

The embeddings reach workers once (``client.scatter``); a shard is built where it is first
needed and Dask copies it at most once to each other worker that searches it.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager

import numpy as np
import psutil
from numba import njit, prange

from d2scale.graph import ivf
from d2scale.graph.exact import flat_search, merge_sorted
from d2scale.io import save_npy, save_npz
from d2scale.types import EmbeddingBlocks

MEMORY_FRACTION = 0.5  # default budget: this share of the currently available memory
STORED_PROBES = 16  # lists per row kept from the assignment pass (larger nprobe: probe again)


def default_memory_limit() -> int:
    """Bytes a build may use for its shards by default."""
    return int(MEMORY_FRACTION * psutil.virtual_memory().available)


def plan_shards(n: int, bytes_per_row: int, memory_limit: int) -> list[list[int]]:
    """Split rows ``[0, n)`` into the fewest equal contiguous ranges that fit ``memory_limit``."""
    count = max(1, math.ceil(n * bytes_per_row / max(memory_limit, 1)))
    count = min(count, n)
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return [[int(a), int(b)] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@contextmanager
def task_client(client=None):
    """The caller's ``distributed.Client``, or an in-process one-thread cluster for the build.

    The local cluster runs one task at a time: faiss, BLAS and numba already use every core
    inside each task.
    """
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            dashboard_address=":0",  # no fixed port: several builds may run at once
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster, set_as_default=False) as local,
    ):
        yield local


def part_rows(offsets: np.ndarray, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Group sorted global ``rows`` by partition: ``{partition: local rows}``."""
    parts = np.searchsorted(offsets, rows, side="right") - 1
    return {int(p): rows[parts == p] - offsets[p] for p in np.unique(parts)}


# ---------------------------------------------------------------- tasks


def take_rows(blocks: EmbeddingBlocks, part: int, local: np.ndarray) -> np.ndarray:
    """Rows ``local`` of partition ``part``."""
    return np.ascontiguousarray(blocks.load(part)[local], dtype=np.float32)


def assign_part(
    blocks: EmbeddingBlocks,
    part: int,
    offset: int,
    projection: ivf.Projection | None,
    centroids: np.ndarray,
    x_eval: np.ndarray,
    keep: int,
    kernels: ivf.Kernels,
    lists_path: str | None = None,
) -> dict:
    """IVF assignment of one partition, and its exact top-``keep`` for the evaluation queries.

    Returns ``y`` (search-space rows, None without PCA), ``probes`` (the nearest
    ``STORED_PROBES`` lists of each row, int32; the first is the row's list) and ``truth``
    (global ids and squared distances of the evaluation queries' best rows here).
    """
    x = blocks.load(part)
    y = None if projection is None else projection(x)
    probes = ivf.probe(x if y is None else y, centroids, STORED_PROBES, kernels.knn_small)
    if lists_path is not None:
        save_npy(lists_path, probes[:, 0])
    truth = None
    if x_eval.size:
        pos, d2 = flat_search(x_eval, x, keep, knn=kernels.knn)
        truth = (np.where(pos >= 0, pos + offset, -1), d2)
    return {"y": y, "probes": probes, "truth": truth}


def build_shard(
    blocks: EmbeddingBlocks,
    offsets: np.ndarray,
    start: int,
    end: int,
    assigned: list[dict] | None,
    nlist: int,
) -> ivf.Lists:
    """The rows ``[start, end)`` as inverted lists (``assigned``: per-partition assignments of
    the partitions overlapping the range, in order; None: one flat list)."""
    spans = _spans(offsets, start, end)
    if assigned is None:
        x = np.concatenate([blocks.load(p)[a:b] for p, a, b in spans])
        ids = np.arange(start, end, dtype=np.int64)
        return ivf.Lists(ids, _f32(x), None, np.array([0, end - start]))
    pieces = list(zip(assigned, spans, strict=True))
    lists = np.concatenate([a["probes"][s:e, 0] for a, (_, s, e) in pieces])
    order, lims = ivf.list_order(lists, nlist)
    dest = np.empty_like(order)
    dest[order] = np.arange(order.size)
    x = np.empty((end - start, blocks.dim), dtype=np.float32)
    at = 0
    for p, a, b in spans:
        _scatter_rows(x, dest[at : at + b - a], _f32(blocks.load(p)[a:b]))
        at += b - a
    y = None
    if assigned[0]["y"] is not None:
        y = np.concatenate([a["y"][s:e] for a, (_, s, e) in pieces])[order]
    return ivf.Lists(order.astype(np.int64) + start, x, y, lims)


def probe_part(
    blocks: EmbeddingBlocks, part: int, assigned: dict, centroids, nprobe: int, kernels
) -> np.ndarray:
    """The ``nprobe`` lists each query of partition ``part`` probes."""
    if nprobe <= assigned["probes"].shape[1]:
        return assigned["probes"][:, :nprobe]
    y = blocks.load(part) if assigned["y"] is None else assigned["y"]
    return ivf.probe(y, centroids, nprobe, kernels.knn_small)


def search_part(
    lists: ivf.Lists,
    blocks: EmbeddingBlocks,
    part: int,
    assigned: dict | None,
    probes: np.ndarray | None,
    m: int,
    kernels: ivf.Kernels,
    path: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of partition ``part`` in one shard: (global ids, search d², full d²)."""
    x = blocks.load(part)
    if probes is None:  # exact shard
        pos, d2 = flat_search(x, lists.x, m, ids=lists.ids, knn=kernels.knn)
        out = (np.where(pos >= 0, lists.ids[np.maximum(pos, 0)], -1), d2, d2)
    else:
        y = None if assigned is None else assigned["y"]
        out = ivf.ivf_search(x, y, probes, lists, m, kernels.scan)
    if path is not None:
        save_npz(path, ids=out[0], key=out[1], full=out[2])
    return out


def merge_part(
    results: list, m: int, k: int, offset: int, path: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Global top-k of one partition from its shards' candidates (tuples or ``.npz`` paths).

    The best ``m`` by search distance, then the best by full distance, self dropped by id.
    """
    loaded = [_load_candidates(r) if isinstance(r, str) else r for r in results]
    ids, _, full = merge_sorted(
        [r[0] for r in loaded], [r[1] for r in loaded], m, [r[2] for r in loaded]
    )
    nbr, d2 = merge_sorted([ids], [full], m)
    nbr, d2 = drop_self(nbr, d2, offset + np.arange(nbr.shape[0]), k)
    dist = np.sqrt(d2).astype(np.float32)
    if path is not None:
        save_npz(path, neighbors=nbr, distances=dist)
    return nbr, dist


def drop_self(
    ids: np.ndarray, d2: np.ndarray, self_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (wherever it ranks) and keep the first ``k`` entries."""
    is_self = ids == self_ids[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(d2, order, axis=1)


def _load_candidates(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["ids"], z["key"], z["full"]


@njit(parallel=True, cache=True)
def _scatter_rows(dst, rows, src):
    for i in prange(rows.shape[0]):
        dst[rows[i], :] = src[i, :]


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _spans(offsets: np.ndarray, start: int, end: int) -> list[tuple[int, int, int]]:
    """(partition, local start, local end) pieces covering global rows ``[start, end)``."""
    out = []
    for p in range(len(offsets) - 1):
        a, b = max(start, offsets[p]), min(end, offsets[p + 1])
        if a < b:
            out.append((p, int(a - offsets[p]), int(b - offsets[p])))
    return out


def tune_search(
    lists: ivf.Lists,
    x_eval: np.ndarray,
    y_eval: np.ndarray | None,
    probes: np.ndarray,
    grid: list[int],
    m: int,
    kernels: ivf.Kernels,
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Candidates of the evaluation queries in one shard for every ``nprobe`` of ``grid``."""
    return {p: ivf.ivf_search(x_eval, y_eval, probes[:, :p], lists, m, kernels.scan) for p in grid}
