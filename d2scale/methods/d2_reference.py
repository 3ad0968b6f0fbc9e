"""The D2 seed's DataComp script (``select_d2_datacomp.py``), reproduced exactly on a graph.

What the script computes, step by step:

1. **Graph.** A faiss search for ``k + 1`` results per row; the *first result is dropped by
   position* (not the row itself by identity) and every distance is the *squared* L2
   distance minus the first result's: ``D = D_raw[:, 1:k+1] − D_raw[:, :1]``. The lists stay
   directed (no symmetrisation).
2. **Forward.** ``g_i = Σ_t exp(−γf·D_it)·max(s_{I_it}, eps) + max(s_i, eps)``: the row's
   own score is clamped at ``eps`` too (SPEC §1 adds it unclamped); the script fixes γf = 1.
3. **Reverse.** The static order is ``np.argsort(g)[::-1]``: scores descending, ties → the
   *higher* row first. Then the standby greedy walks it: a standby row whose current score is
   ≥ the cursor row's is picked first; a cursor row whose current score is below the next
   static row's goes to standby; else it is picked. A pick ``u`` lowers *its own directed
   list* (selected rows included): ``g_v −= g_u·exp(−γr·D_uv)``.

On a d2scale kNN graph (self excluded by identity, Euclidean distances) the script's search
result of row ``i`` is taken to be ``[i at distance 0] + knn[i]``, so ``D = d²``: what an exact
search returns when no other row lies at distance 0 (with exact duplicates the script may drop
the duplicate and keep the row itself; pass raw search results to :func:`reference_order`
to reproduce that too).

``--greedy standby`` (``d2scale.d2.standby``) runs the same loop but on SPEC §1's inputs:
Euclidean (not squared) distances, forward scores over the *symmetrised* graph with the own
score unclamped, and ties → the lower row. Those inputs, not the loop, make it disagree with
the script (Jaccard ≈ 0.63 on the same exact graph); this module feeds the loop the script's.
The script's float32 intermediates are computed in float64 here, which can reorder rows
whose scores agree to ~1e-7.
"""

from __future__ import annotations

import numpy as np

from d2scale.d2.standby import _standby
from d2scale.errors import D2ScaleError
from d2scale.methods._options import step_options
from d2scale.methods.base import GRAPH_FLAGS
from d2scale.params import check_budget
from d2scale.types import KnnGraph

EPS = 1e-7


def search_results(knn: KnnGraph) -> tuple[np.ndarray, np.ndarray]:
    """A d2scale graph as the script's raw search: ``(I, D_raw)`` with ``k + 1`` columns, the
    row itself first at distance 0, then its kNN list with squared distances."""
    n = knn.n
    ids = np.empty((n, knn.k + 1), dtype=np.int64)
    sq = np.empty((n, knn.k + 1), dtype=np.float64)
    ids[:, 0], sq[:, 0] = np.arange(n), 0.0
    ids[:, 1:] = knn.neighbors
    d = np.asarray(knn.distances, dtype=np.float64)
    sq[:, 1:] = np.where(knn.neighbors >= 0, d * d, np.inf)
    return ids, sq


def shifted_lists(ids: np.ndarray, sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: drop the first result, subtract its squared distance from the others."""
    if ids.shape != sq.shape or ids.ndim != 2 or ids.shape[1] < 2:
        raise D2ScaleError("search results must be two (n, k+1) arrays with k ≥ 1.")
    sq = np.asarray(sq, dtype=np.float64)
    return np.ascontiguousarray(ids[:, 1:], dtype=np.int64), sq[:, 1:] - sq[:, :1]


def reference_forward(
    neighbors: np.ndarray, shifted: np.ndarray, scores: np.ndarray, *, gamma_forward: float = 1.0
) -> np.ndarray:
    """Step 2: the script's forward scores (float64); ``-1`` neighbours contribute nothing."""
    s = np.asarray(scores, dtype=np.float64)
    valid = neighbors >= 0
    neighbour_scores = np.maximum(s[np.where(valid, neighbors, 0)], EPS)
    with np.errstate(over="ignore"):
        messages = np.where(valid, np.exp(-shifted * gamma_forward) * neighbour_scores, 0.0)
    return messages.sum(axis=1) + np.maximum(s, EPS)


def reference_order(
    ids: np.ndarray,
    sq: np.ndarray,
    scores: np.ndarray,
    *,
    gamma: float = 1.0,
    gamma_forward: float = 1.0,
    budget: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick order (int64, ``budget`` rows) and forward scores of the script on raw search
    results ``(ids, sq)`` (``k + 1`` columns each) and shifted scores."""
    n = ids.shape[0]
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,) or not np.isfinite(scores).all():
        raise D2ScaleError(f"scores must be {n} finite numbers (one per row).")
    if ids.size and (ids.min() < -1 or ids.max() >= n):
        raise D2ScaleError(f"neighbour ids must lie in [-1, {n}).")
    budget = check_budget(budget, n)
    neighbors, shifted = shifted_lists(ids, sq)
    forward = reference_forward(neighbors, shifted, scores, gamma_forward=gamma_forward)
    with np.errstate(over="ignore"):
        weights = np.where(neighbors >= 0, np.exp(-shifted * gamma), 0.0)
    static = np.argsort(forward, kind="stable")[::-1].copy()  # ties → higher row first
    order = _standby(neighbors, weights, forward.copy(), static, budget)
    return order.astype(np.int64), forward


FLAGS = (*GRAPH_FLAGS, "gamma", "gamma_forward")  # the global flags it reads
DESCRIPTION = "the D2 seed's DataComp script exactly (directed lists, squared distances, standby)"


def options(given: dict, params) -> dict:
    """None: the script's settings come from the global flags."""
    return step_options("d2-reference", given, {})


def rank(inputs, params):
    """Registry adapter: the step's kNN graph (``--n-neighbors``), its shifted scores,
    ``--gamma`` and ``--gamma-forward`` (the script's are 1.0); no options."""
    from d2scale.types import Ranking

    options(inputs.options, params)
    knn, _ = inputs.knn_graph()
    ids, sq = search_results(knn)
    order, forward = reference_order(ids, sq, inputs.scores, gamma=params.gamma,
                                     gamma_forward=params.gamma_forward,
                                     budget=inputs.budget)  # fmt: skip
    return Ranking(order, {"forward_score": forward}, {"variant": "select_d2_datacomp.py"})
