"""The DataComp reference script's approximate greedy loop ("standby") on d2scale's forward
scores. Not the exact greedy of SPEC §1: use only as a named option. It is the script's
*loop* only: the script also feeds it other inputs (directed lists, squared distances, its own
forward pass), so its subsets differ (Jaccard 0.43/0.66/0.81 at 10/30/50%,
``benchmarks/bench_d2_reference.py``); ``select --method d2-reference`` reproduces the script.

Static order = forward scores descending (ties → lower index), a cursor into it and a
standby list. Until ``budget`` picks: if the standby list is non-empty and its best
current score (first in standby order on ties) is ≥ the current score of the node at the
cursor, pick that standby node; else, if the cursor node is unselected, move it to standby
when its current score is below that of the next node in the static order, or pick it;
then advance the cursor. A pick ``u`` updates its *directed* kNN list, all k neighbours
selected or not, as the reference does: ``g[v] -= g[u]·w_uv``. Where the reference would
index past the end of the static order, the last node is compared with nothing (picked)
and afterwards only the standby list is drawn from. The argmax over the standby list is a
segment tree over standby slots, so a run costs O(N·k·log N) instead of the reference's
O(N · standby size). A kNN list that names a neighbour twice updates it twice (the
reference's NumPy fancy indexing would update it once); kNN lists have no repeats.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from d2scale.d2.weights import kernel_weights
from d2scale.errors import D2ScaleError
from d2scale.params import check, check_budget
from d2scale.types import KnnGraph


def standby_order(
    knn: KnnGraph,
    forward: np.ndarray,
    *,
    gamma: float,
    budget: int | None,
    sampling: str = "weighted",
) -> np.ndarray:
    """Pick order (int64, ``budget`` nodes) of the standby heuristic on the directed ``knn``."""
    forward = np.array(forward, dtype=np.float64)
    if forward.shape != (knn.n,) or not np.isfinite(forward).all():
        raise D2ScaleError(f"forward scores must be {knn.n} finite numbers (one per node).")
    check("sampling", sampling)
    budget = check_budget(budget, knn.n)
    neighbors = np.ascontiguousarray(knn.neighbors, dtype=np.int64)
    if neighbors.size and (neighbors.min() < -1 or neighbors.max() >= knn.n):
        raise D2ScaleError(f"kNN neighbour ids must lie in [-1, {knn.n}): rebuild the graph.")
    if sampling == "absolute":
        weights = np.ones(neighbors.shape, dtype=np.float64)
    else:
        weights = kernel_weights(np.asarray(knn.distances), gamma)
    static = np.argsort(-forward, kind="stable")
    return _standby(neighbors, weights, forward, static, budget)


@njit(cache=True, nogil=True)
def _standby(neighbors, weights, g, static, budget):
    n = g.shape[0]
    leaves = 1
    while leaves < n:
        leaves *= 2
    tree_key = np.full(2 * leaves, -np.inf)  # max-tree over standby slots, leftmost on ties
    tree_slot = np.zeros(2 * leaves, np.int32)
    for s in range(leaves):
        tree_slot[leaves + s] = s
    slot_of = np.full(n, -1, np.int64)
    node_of = np.empty(n, np.int64)
    selected = np.zeros(n, np.uint8)
    picks = np.empty(budget, np.int64)
    count = n_slots = n_standby = cursor = 0
    while count < budget:
        if n_standby > 0 and (cursor >= n or tree_key[1] >= g[static[cursor]]):
            u = node_of[tree_slot[1]]
            _set_slot(tree_key, tree_slot, leaves, slot_of[u], -np.inf)
            slot_of[u] = -1
            n_standby -= 1
        elif cursor < n:
            c = static[cursor]
            cursor += 1
            if selected[c]:
                continue
            if cursor < n and g[c] < g[static[cursor]]:
                slot_of[c] = n_slots
                node_of[n_slots] = c
                _set_slot(tree_key, tree_slot, leaves, n_slots, g[c])
                n_slots += 1
                n_standby += 1
                continue
            u = c
        else:
            break
        selected[u] = 1
        picks[count] = u
        count += 1
        _update(neighbors, weights, g, u, slot_of, tree_key, tree_slot, leaves)
    return picks[:count]


@njit(cache=True, nogil=True)
def _update(neighbors, weights, g, u, slot_of, tree_key, tree_slot, leaves):
    """``g[v] -= g[u]·w_uv`` over u's directed list, keeping standby slots current."""
    gu = g[u]
    for t in range(neighbors.shape[1]):
        v = neighbors[u, t]
        if v < 0:
            continue
        g[v] = g[v] - gu * weights[u, t]
        if slot_of[v] >= 0:
            _set_slot(tree_key, tree_slot, leaves, slot_of[v], g[v])


@njit(cache=True, nogil=True)
def _set_slot(tree_key, tree_slot, leaves, slot, key):
    a = leaves + slot
    tree_key[a] = key
    while a > 1:
        a //= 2
        left, right = 2 * a, 2 * a + 1
        best = right if tree_key[right] > tree_key[left] else left
        tree_key[a] = tree_key[best]
        tree_slot[a] = tree_slot[best]
