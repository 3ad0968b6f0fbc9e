"""Compiled exact greedy of the reverse pass (the contract is in :mod:`d2scale.d2.reverse`).

Data structure: a tournament tree with lazy decreases. Nodes are split into groups of
``GROUP`` consecutive ids; a padded 4-ary tree over the groups stores at every tree node a
record ``(key, node)``, best first by key descending, then id ascending (the greedy's tie
rule). Invariant: every record beats the records below it and the current score of every
unselected node below it. Hence:

- an update that *lowers* a score (positive pick scores: the usual case) writes only the
  score; records above it become stale upper bounds;
- an update that *raises* a score (after a negative pick) climbs from the node's group
  while it beats the records on its way;
- at the root ``(key, u)``: if ``score[u] == key``, ``u`` beats every unselected node and is
  the greedy's pick; otherwise (stale) re-scan ``u``'s group and recompute its path;
- a raised neighbour that beats the root's record (once the pick's path is recomputed) beats
  every other node, so it is the next pick without climbing (those climbs went to the
  root): after a negative pick, when a neighbour often overtakes the rest.

Selected nodes hold NaN in a private copy of the scores, so that updates need no test
(NaN stays NaN and never compares greater). Records are 16-byte ``(key, float(node))``
pairs, stored with an offset of 3 so that each group of 4 children fills one cache line.
With ``GROUP = 32`` the tree over N nodes takes about N bytes and mostly stays in cache.
Cost: O((N + E) log N) and, in practice, a few cache misses per pick and per edge.

Memory latency, not arithmetic, sets the pace on large graphs, so the loop prefetches
(:mod:`d2scale.d2._prefetch`; no value changes): the neighbours' scores of the pick before
its path is recomputed, and, as soon as the next root is known, that likely next pick's
row pointers and score group (during this pick's updates) and then its row.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from d2scale.d2._prefetch import prefetch

GROUP = 32  # leaves scanned linearly at the bottom of the tree
_OFF = 3  # record slot of tree node a is a + _OFF: the children 4a+1..4a+4 share a cache line


@njit(cache=True, nogil=True)
def greedy_kernel(indptr, indices, weights, values, selected, budget, write_back, scores=True):
    """Next ``min(budget, unselected)`` picks and their scores (empty without ``scores``,
    unless ``write_back``). With ``write_back`` the state (``values``, ``selected``) is
    updated in place; otherwise it is left untouched."""
    n = values.shape[0]
    work = values.copy()
    remaining = 0
    for i in range(n):
        if selected[i]:
            work[i] = np.nan
        else:
            remaining += 1
    rec, n_internal = _build_tree(work)
    m = max(0, min(budget, remaining))
    picks = np.empty(m, np.int64)
    picked_values = np.empty(m if scores or write_back else 0, np.float64)
    raised = np.empty(_max_degree(indptr) + 1, np.int64)
    count = 0
    forced = -1  # the next pick, when a raised neighbour of this one is known to beat all
    while count < m:
        if forced >= 0:
            u = forced
            forced = -1
            e0 = indptr[u]
            e1 = indptr[u + 1]
            cur = work[u]
        else:
            u = int(rec[_OFF, 1])
            e0 = indptr[u]  # loaded before the stale test: the two cache misses overlap
            e1 = indptr[u + 1]
            cur = work[u]
            if cur < rec[_OFF, 0]:  # stale root: u's score dropped since its record was made
                _refresh(rec, work, n_internal, u)
                continue
        work[u] = np.nan
        picks[count] = u
        if picked_values.shape[0]:
            picked_values[count] = cur
        count += 1
        for e in range(e0, e1):  # arrive while the path below is recomputed
            prefetch(work, indices[e])
        _refresh(rec, work, n_internal, u)
        nxt = min(int(rec[_OFF, 1]), n - 1)  # likely the next pick
        _prefetch_pick(indptr, work, nxt)
        n_raised, best = _update_neighbours(e0, e1, indices, weights, work, cur, raised)
        if best >= 0 and _beats(work[best], best, rec[_OFF, 0], rec[_OFF, 1]):
            forced = nxt = best  # it beats the root's bound of all others: no climb needed
            prefetch(indptr, best)
        for r in range(n_raised):
            if raised[r] != forced:
                _climb(rec, n_internal, raised[r], work[raised[r]])
        _prefetch_row(indptr, indices, weights, nxt)
    if not write_back:
        return picks, picked_values
    for i in range(n):
        if not selected[i]:
            values[i] = work[i]
    for c in range(count):
        values[picks[c]] = picked_values[c]
        selected[picks[c]] = 1
    return picks, picked_values


@njit(cache=True, nogil=True)
def _prefetch_pick(indptr, work, v):
    """Prefetch node v's row pointers and its group of scores."""
    prefetch(indptr, v)
    g0 = v // GROUP * GROUP
    for x in range(g0, g0 + GROUP, 8):  # 8 float64 scores a cache line
        prefetch(work, x)


@njit(cache=True, nogil=True)
def _prefetch_row(indptr, indices, weights, v):
    """Prefetch node v's row (its pointers were prefetched earlier)."""
    for e in range(indptr[v], indptr[v + 1], 16):  # 16 int32 ids a cache line
        prefetch(indices, e)
    for e in range(indptr[v], indptr[v + 1], 8):
        prefetch(weights, e)


@njit(cache=True, nogil=True)
def _update_neighbours(e0, e1, indices, weights, work, cur, raised):
    """``work[v] -= w_uv·cur`` over the edges e0..e1 of the pick, without branches; list
    the raised nodes. Returns their count and the best of them (score, then lowest id), or
    -1."""
    n_raised = 0
    best = -1
    best_key = -np.inf
    for e in range(e0, e1):
        v = indices[e]
        old = work[v]
        new = old - weights[e] * cur
        work[v] = new
        raised[n_raised] = v
        up = new > old
        better = up & ((new > best_key) | ((new == best_key) & (v < best)))
        best_key = new if better else best_key
        best = v if better else best
        n_raised += up
    return n_raised, best


@njit(cache=True, nogil=True, inline="always")
def _beats(key, node, other_key, other_node):
    """Whether (key, node) comes before the record (other_key, other_node): the greedy's
    order, score descending, then id ascending."""
    return key > other_key or (key == other_key and float(node) < other_node)


@njit(cache=True, nogil=True)
def _max_degree(indptr):
    best = 0
    for i in range(indptr.shape[0] - 1):
        best = max(best, indptr[i + 1] - indptr[i])
    return best


@njit(cache=True, nogil=True)
def _build_tree(work):
    """Records of all tree nodes, bottom-up; returns (records, number of internal nodes)."""
    n_groups = (work.shape[0] + GROUP - 1) // GROUP
    width = 1
    while width < n_groups:
        width *= 4
    n_internal = (width - 1) // 3
    rec = np.empty((n_internal + width + _OFF, 2), np.float64)
    for g in range(width):
        key, node = _group_best(work, g)
        rec[n_internal + g + _OFF, 0] = key
        rec[n_internal + g + _OFF, 1] = node
    for a in range(n_internal - 1, -1, -1):
        _merge_children(rec, a)
    return rec, n_internal


@njit(cache=True, nogil=True)
def _group_best(work, g):
    """Best (score, id) of group g; (-inf, first id) when all are selected or padding."""
    key = -np.inf
    node = g * GROUP
    for v in range(g * GROUP, min(g * GROUP + GROUP, work.shape[0])):
        s = work[v]
        better = s > key  # ascending ids: on ties the first (lowest) id stays
        key = s if better else key
        node = v if better else node
    return key, float(node)


@njit(cache=True, nogil=True)
def _merge_children(rec, a):
    """Record of internal node a = best of its four children's records."""
    base = 4 * a + 1 + _OFF
    key = rec[base, 0]
    node = rec[base, 1]
    for q in range(base + 1, base + 4):
        kq = rec[q, 0]
        nq = rec[q, 1]
        better = (kq > key) | ((kq == key) & (nq < node))
        key = kq if better else key
        node = nq if better else node
    rec[a + _OFF, 0] = key
    rec[a + _OFF, 1] = node


@njit(cache=True, nogil=True)
def _refresh(rec, work, n_internal, v):
    """Re-scan v's group and recompute the records on its path to the root.
    (:func:`_group_best` and :func:`_merge_children`, inlined by hand: this is the hot
    path, and a call per level measured ~10% slower.)"""
    g = v // GROUP
    key = -np.inf
    node = g * GROUP
    for x in range(g * GROUP, min(g * GROUP + GROUP, work.shape[0])):
        s = work[x]
        better = s > key
        key = s if better else key
        node = x if better else node
    a = n_internal + g
    rec[a + _OFF, 0] = key
    rec[a + _OFF, 1] = float(node)
    while a > 0:
        a = (a - 1) // 4
        base = 4 * a + 1 + _OFF
        key = rec[base, 0]
        best = rec[base, 1]
        for q in range(base + 1, base + 4):
            kq = rec[q, 0]
            nq = rec[q, 1]
            better = (kq > key) | ((kq == key) & (nq < best))
            key = kq if better else key
            best = nq if better else best
        rec[a + _OFF, 0] = key
        rec[a + _OFF, 1] = best


@njit(cache=True, nogil=True)
def _climb(rec, n_internal, v, key):
    """Node v's score rose to ``key``: take over the records it now beats, bottom-up."""
    node = float(v)
    a = n_internal + v // GROUP
    while True:
        ka = rec[a + _OFF, 0]
        if not _beats(key, v, ka, rec[a + _OFF, 1]):
            return
        rec[a + _OFF, 0] = key
        rec[a + _OFF, 1] = node
        if a == 0:
            return
        a = (a - 1) // 4
