"""Exact duplicates: search each distinct vector once, then give every copy its neighbours.

Web pools repeat themselves (the same caption or image many times). Copies of a vector are
at distance 0 from each other, so they are each other's nearest neighbours, tied, in id
order — ties that a float32 search cannot order reliably, and repeated work. Rows are hashed
(two independent 64-bit hashes of the float32 bytes: a collision has probability ~n²/2¹²⁸);
every group of equal rows is represented by its lowest id, only representatives are
searched, and :func:`expand` turns the representatives' lists into the rows' lists:
a row's group-mates first (distance 0, by id), then the members of each neighbouring group
by (distance, id).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _hash_rows(words, out):
    m1 = np.uint64(0x9E3779B97F4A7C15)
    m2 = np.uint64(0xC2B2AE3D27D4EB4F)
    m3 = np.uint64(0x165667B19E3779F9)
    for i in range(words.shape[0]):
        h1 = np.uint64(0x243F6A8885A308D3)
        h2 = np.uint64(0x13198A2E03707344)
        for t in range(words.shape[1]):
            w = np.uint64(words[i, t])
            h1 = (h1 ^ w) * m1
            h1 ^= h1 >> np.uint64(29)
            h2 = (h2 + w * m3) * m2
            h2 ^= h2 >> np.uint64(31)
        out[i, 0] = h1
        out[i, 1] = h2


def row_hashes(x: np.ndarray) -> np.ndarray:
    """Two 64-bit hashes of each float32 row's bytes (``-0.0`` and ``0.0`` hash alike)."""
    x = np.ascontiguousarray(x, dtype=np.float32) + np.float32(0.0)  # -0.0 → 0.0
    out = np.empty((x.shape[0], 2), dtype=np.uint64)
    if x.shape[0]:
        _hash_rows(x.view(np.uint32), out)
    return out


def representatives(hashes: np.ndarray) -> np.ndarray:
    """``rep[i]``: the lowest row id with the same hash as row ``i`` (int64)."""
    n = hashes.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    keys = np.ascontiguousarray(hashes).view([("a", np.uint64), ("b", np.uint64)]).ravel()
    order = np.argsort(keys, kind="stable")  # equal keys keep id order
    sk = keys[order]
    start = np.concatenate([[True], sk[1:] != sk[:-1]])
    first = order[np.flatnonzero(start)][np.cumsum(start) - 1]
    rep = np.empty(n, dtype=np.int64)
    rep[order] = first
    return rep


def groups(rep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group of every representative: (members sorted by (rep, id), start, end) with
    ``members[start[r]:end[r]]`` the rows represented by row ``r`` (empty for non-reps)."""
    order = np.argsort(rep, kind="stable").astype(np.int64)
    n = rep.shape[0]
    start = np.searchsorted(rep[order], np.arange(n), side="left")
    end = np.searchsorted(rep[order], np.arange(n), side="right")
    return order, start.astype(np.int64), end.astype(np.int64)


@njit(cache=True, nogil=True)
def _expand(rep, members, start, end, unbr, ud, k, out_i, out_d):
    n = rep.shape[0]
    for i in range(n):
        r = rep[i]
        m = 0
        for e in range(start[r], end[r]):  # group-mates, by id
            j = members[e]
            if j != i and m < k:
                out_i[i, m] = j
                out_d[i, m] = 0.0
                m += 1
        for t in range(unbr.shape[1]):  # neighbouring groups by (distance, id)
            if m >= k:
                break
            g = unbr[r, t]
            if g < 0:
                break
            d = ud[r, t]
            for e in range(start[g], end[g]):
                if m >= k:
                    break
                j = members[e]
                # insert keeping (distance, id) order among entries at this distance
                p = m
                while p > 0 and out_d[i, p - 1] == d and out_i[i, p - 1] > j:
                    out_i[i, p] = out_i[i, p - 1]
                    out_d[i, p] = out_d[i, p - 1]
                    p -= 1
                out_i[i, p] = j
                out_d[i, p] = d
                m += 1
        for t in range(m, k):
            out_i[i, t] = -1
            out_d[i, t] = np.inf


def expand(rep: np.ndarray, nbr: np.ndarray, dist: np.ndarray, k: int):
    """Every row's ``k`` neighbours from its representative's lists.

    ``nbr``/``dist`` (N × k', rows of representatives filled, others ignored) hold the
    representatives' nearest other *representatives* by (distance, id).
    """
    members, start, end = groups(rep)
    out_i = np.empty((rep.shape[0], k), dtype=np.int64)
    out_d = np.empty((rep.shape[0], k), dtype=np.float32)
    if rep.shape[0]:
        _expand(rep, members, start, end, np.ascontiguousarray(nbr, dtype=np.int64),
                np.ascontiguousarray(dist, dtype=np.float32), k, out_i, out_d)  # fmt: skip
    return out_i, out_d
