"""Resident pages of memory-mapped graph files: given back once read.

A read-only memory map of ``neighbors.npy`` counts in the process's RSS for every page it
has touched (12 bytes per kNN entry: 1.5 GiB at 12.8M × 10). Passes that stream through it
once hand the pages they have read back with ``madvise(MADV_DONTNEED)``: the data stays in
the page cache (memory the kernel may reclaim) and is read back if touched again, so this
changes no result, only the peak RSS.
"""

from __future__ import annotations

import mmap

import numpy as np


def release_rows(a: np.ndarray, lo: int, hi: int) -> None:
    """Give back the whole pages of rows ``lo..hi`` of ``a`` when ``a`` is (a view of) a
    read-only ``np.memmap``; anything else is left alone."""
    region = _read_only_map(a)
    if region is None or hi <= lo or a.ndim == 0:
        return
    start = np.frombuffer(region, np.uint8).__array_interface__["data"][0]
    first = a.__array_interface__["data"][0] - start + int(lo) * a.strides[0]
    end = first + (int(hi) - int(lo)) * a.strides[0]
    first = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE
    end = end // mmap.PAGESIZE * mmap.PAGESIZE
    if end > first:
        region.madvise(mmap.MADV_DONTNEED, first, end - first)


def release_all(*arrays: np.ndarray) -> None:
    """:func:`release_rows` of every row of each array."""
    for a in arrays:
        release_rows(a, 0, a.shape[0] if a.ndim else 0)


def _read_only_map(a: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` under ``a`` if ``a`` views a C-ordered read-only ``np.memmap``."""
    x = a
    while isinstance(x, np.ndarray):
        if isinstance(x, np.memmap):
            region = getattr(x, "_mmap", None)
            ok = x.mode == "r" and isinstance(region, mmap.mmap) and a.flags.c_contiguous
            return region if ok else None
        x = x.base
    return None
