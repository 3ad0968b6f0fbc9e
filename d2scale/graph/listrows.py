"""The full rows in list order on disk, for a re-ranking that reads the pool once.

Streaming the pool past blocks of queries (:func:`d2scale.graph.shards.rerank_streamed`)
reads the whole pool once per block, and the blocks grow in number with the pool: at
12.8M rows that was 40 reads of 19.7 GB. Here one pass writes every distinct row, a file
per partition with its rows in the search's list order; a block of queries (consecutive in
that order) then reads only its own rows and its candidates' rows, which lie in the lists
near its own, so the blocks sweep the files with a small working set.

float16 pools are written as their raw halves with each member's float64 norm, from which
:func:`d2scale.pool.halfprec.scaled_halves` gives exactly the float32 rows the source
gives (half the disk of float32); other sources are written as their float32 rows. Every
distance comes from :func:`d2scale.graph.rerank.pair_d2`, so the result is the streamed
re-ranking's, bit for bit. Each partition's file is written atomically: a checkpoint.
"""

from __future__ import annotations

import os

import numpy as np

from d2scale.graph import rerank, scan
from d2scale.graph.shards import chunk_rows, iter_rows, part_rows, single_threaded
from d2scale.io import atomic_path
from d2scale.pool.halfprec import scaled_halves
from d2scale.types import EmbeddingBlocks


def rows_path(directory: str, part: int) -> str:
    return os.path.join(directory, f"listrows-{part:05d}.npy")


def norms_path(directory: str, part: int) -> str:
    return os.path.join(directory, f"listnorms-{part:05d}.npy")


def half_members(blocks: EmbeddingBlocks) -> list[int] | None:
    """Each member's columns when the source gives raw float16 rows, else None."""
    own = getattr(blocks, "half_members", None)
    return None if own is None else own()


def row_bytes(blocks: EmbeddingBlocks) -> int:
    """Disk bytes a row takes in the files."""
    cols = half_members(blocks)
    return 4 * blocks.dim if cols is None else 2 * blocks.dim + 8 * len(cols)


def file_order(q_all: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows in file order, each file's first position): the rows ``q_all`` (in list order)
    grouped by partition, each keeping its list order."""
    part = np.searchsorted(offsets, q_all, side="right") - 1
    by_part = np.argsort(part, kind="stable")
    first = np.searchsorted(part[by_part], np.arange(len(offsets)))
    return q_all[by_part], first.astype(np.int64)


def write_part(blocks: EmbeddingBlocks, part: int, local: np.ndarray, directory: str) -> int:
    """Task: partition ``part``'s rows ``local`` (in file order) into its files; the rows."""
    single_threaded()
    cols = half_members(blocks)
    halves = cols is not None
    order = np.argsort(local, kind="stable")  # read in pool order, placed in file order
    wanted = local[order]
    if halves:
        chunks = blocks.iter_halves(part, wanted, chunk_rows(blocks.dim))
        norms = np.empty((local.size, len(cols)))
    else:
        chunks = ((a, b, x, None) for a, b, x in iter_rows(blocks, part, wanted))
    with atomic_path(rows_path(directory, part)) as tmp:
        dtype = np.float16 if halves else np.float32
        out = np.lib.format.open_memmap(tmp, "w+", dtype, (local.size, blocks.dim))
        for a, b, x, nm in chunks:
            out[order[a:b]] = x
            if halves:
                norms[order[a:b]] = nm
        out.flush()
        del out
        if halves:  # written before the rows file that says the partition is done
            with atomic_path(norms_path(directory, part)) as ntmp, open(ntmp, "wb") as f:
                np.save(f, norms)
    return int(local.size)


def part_done(directory: str, part: int, rows: int, blocks: EmbeddingBlocks) -> bool:
    """Whether partition ``part``'s files are whole (written by :func:`write_part`)."""
    cols = half_members(blocks)
    want = [(rows_path(directory, part), (rows, blocks.dim))]
    if cols is not None:
        want.append((norms_path(directory, part), (rows, len(cols))))
    for path, shape in want:
        try:
            if np.load(path, mmap_mode="r").shape != shape:
                return False
        except (OSError, ValueError):
            return False
    return True


class _Reader:
    """Float32 rows of the files by position (sorted positions read in one sweep)."""

    def __init__(self, directory: str, first: np.ndarray, blocks: EmbeddingBlocks):
        self.directory, self.first = directory, first
        self.cols = half_members(blocks)
        self.dim = blocks.dim

    def read(self, pos: np.ndarray, out: np.ndarray) -> None:
        """Rows at the sorted global positions ``pos`` into ``out``."""
        b = 0
        for p, slots in part_rows(self.first, pos).items():
            a, b = b, b + slots.size
            rows = np.load(rows_path(self.directory, p), mmap_mode="r")
            if self.cols is None:
                out[a:b] = rows[slots]
                continue
            halves = np.asarray(rows[slots])
            norms = np.load(norms_path(self.directory, p), mmap_mode="r")[slots]
            c = 0
            for m, width in enumerate(self.cols):
                scaled_halves(halves[:, c : c + width], np.ascontiguousarray(norms[:, m]),
                              out[a:b, c : c + width])  # fmt: skip
                c += width


def rerank_block(
    directory: str,
    blocks: EmbeddingBlocks,
    first: np.ndarray,
    pos: np.ndarray,
    q_ids: np.ndarray,
    cand: np.ndarray,
    keep: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task: re-rank the candidates ``cand`` (global ids, ``-1`` padding) of the sorted
    queries ``q_ids`` by exact distance, reading both from the files (``pos``: each row's
    position in them): (query ids, neighbour ids, squared distances)."""
    single_threaded()
    reader = _Reader(directory, first, blocks)
    q_pos = pos[q_ids].astype(np.int64)
    q_order = np.argsort(q_pos, kind="stable")
    xq = np.empty((q_ids.size, blocks.dim), np.float32)  # in file order: read in one sweep
    reader.read(q_pos[q_order], xq)
    q_row = np.empty_like(q_order)
    q_row[q_order] = np.arange(q_order.size)  # query i's row of xq
    flat = cand.ravel()
    valid = np.flatnonzero(flat >= 0)
    c_pos = pos[flat[valid]].astype(np.int64)
    order = np.argsort(c_pos, kind="stable")
    by_pos = c_pos[order]
    pair = valid[order]  # flat index (query * m + slot) of each sorted pair
    m = cand.shape[1]
    d2 = np.full(flat.size, np.inf)
    wanted = scan.unique_sorted(by_pos)
    step = chunk_rows(blocks.dim)
    x = np.empty((min(step, wanted.size), blocks.dim), np.float32)
    for s in range(0, wanted.size, step):
        rows = wanted[s : s + step]
        reader.read(rows, x[: rows.size])
        lo, hi = np.searchsorted(by_pos, [rows[0], rows[-1] + 1])
        sel = pair[lo:hi]
        d2[sel] = rerank.pair_d2(
            xq, q_row[sel // m], x[: rows.size], np.searchsorted(rows, by_pos[lo:hi])
        )
    del xq, x
    nbr, dd = rerank.rank(cand, d2.reshape(cand.shape), keep)
    return q_ids, nbr, dd
