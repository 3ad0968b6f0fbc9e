"""A deliberately plain, independent implementation of D2 Pruning (SPEC §1) for tests.

Everything here is written for obviousness, not speed: Python loops, dense argmax, no
numba, no imports from d2scale except the plain containers. Arithmetic follows the
contract's summation order so that compiled code can be compared for exact equality.
"""

from __future__ import annotations

import numpy as np

from d2scale.types import KnnGraph

EPS = 1e-7


def knn_bruteforce(x: np.ndarray, k: int) -> KnnGraph:
    """Exact kNN lists: the k nearest *other* points, ordered by (distance, index)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    neighbors = np.full((n, k), -1, dtype=np.int64)
    distances = np.full((n, k), np.inf, dtype=np.float32)
    for i in range(n):
        cands = []
        for j in range(n):
            if j != i:
                cands.append((float(np.sqrt(np.sum((x[i] - x[j]) ** 2))), j))
        cands.sort()
        for t, (d, j) in enumerate(cands[:k]):
            neighbors[i, t] = j
            distances[i, t] = d
    return KnnGraph(neighbors=neighbors, distances=distances)


def symmetric_lists(knn: KnnGraph) -> list[dict[int, float]]:
    """N(i) = kNN(i) ∪ {j : i ∈ kNN(j)} as one {neighbour: distance} dict per node.

    ``-1`` entries and self-loops are ignored; an edge present in both directions keeps
    the smaller of its two distances.
    """
    n = knn.n
    rows: list[dict[int, float]] = [{} for _ in range(n)]
    for i in range(n):
        for t in range(knn.k):
            j = int(knn.neighbors[i, t])
            if j < 0 or j == i:
                continue
            d = float(knn.distances[i, t])
            for a, b in ((i, j), (j, i)):
                rows[a][b] = min(d, rows[a].get(b, np.inf))
    return rows


def to_csr(rows: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, distances) with every row sorted by neighbour index."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indices: list[int] = []
    dists: list[float] = []
    for i, row in enumerate(rows):
        for j in sorted(row):
            indices.append(j)
            dists.append(row[j])
        indptr[i + 1] = len(indices)
    return indptr, np.array(indices, dtype=np.int32), np.array(dists, dtype=np.float32)


def kernel_weights(dists: np.ndarray, gamma: float, sampling: str = "weighted") -> np.ndarray:
    """exp(−γ·d) in float64 (the expression the library uses), or ones for 'absolute'."""
    if sampling == "absolute":
        return np.ones(len(dists), dtype=np.float64)
    return np.exp(-gamma * np.asarray(dists).astype(np.float64))


def forward(indptr, indices, dists, scores, gamma_forward=1.0, mode="sum", eps=EPS):
    """g_i = s_i + Σ_j w_ij·max(s_j, eps) (product: s_i · Σ…), summed left to right."""
    w = kernel_weights(dists, gamma_forward)
    s = np.asarray(scores, dtype=np.float64)
    g = np.empty(len(s), dtype=np.float64)
    for i in range(len(s)):
        acc = 0.0
        for e in range(indptr[i], indptr[i + 1]):
            acc = acc + float(w[e]) * max(float(s[indices[e]]), eps)
        g[i] = s[i] + acc if mode == "sum" else s[i] * acc
    return g


def greedy(indptr, indices, weights, values, budget=None, selected=None):
    """O(N²) exact greedy: returns (picks, score of each pick when it was picked)."""
    values = np.array(values, dtype=np.float64)
    n = len(values)
    sel = np.zeros(n, dtype=bool) if selected is None else np.array(selected, dtype=bool)
    budget = n - int(sel.sum()) if budget is None else budget
    picks, picked_values = [], []
    for _ in range(min(budget, n - int(sel.sum()))):
        cand = np.flatnonzero(~sel)
        u = int(cand[np.argmax(values[cand])])  # argmax returns the first → lowest index
        sel[u] = True
        picks.append(u)
        picked_values.append(float(values[u]))
        gu = float(values[u])
        for e in range(indptr[u], indptr[u + 1]):
            v = int(indices[e])
            if not sel[v]:
                values[v] = float(values[v]) - float(weights[e]) * gu
    return np.array(picks, dtype=np.int64), np.array(picked_values, dtype=np.float64)


def d2_order(
    knn: KnnGraph, scores, *, gamma, gamma_forward=1.0, mode="sum", sampling="weighted", budget=None
):
    """The whole exact pipeline: returns (order, forward scores)."""
    indptr, indices, dists = to_csr(symmetric_lists(knn))
    g = forward(indptr, indices, dists, scores, gamma_forward, mode)
    order, _ = greedy(indptr, indices, kernel_weights(dists, gamma, sampling), g, budget)
    return order, g


def drop_cross_edges(rows: list[dict[int, float]], labels) -> list[dict[int, float]]:
    """The bucketed graph: only edges whose two ends carry the same label."""
    return [{j: d for j, d in row.items() if labels[j] == labels[i]} for i, row in enumerate(rows)]


def standby(knn: KnnGraph, forward_scores, gamma, budget, sampling="weighted"):
    """The DataComp reference script's approximate greedy, transcribed with plain lists."""
    g = [float(v) for v in forward_scores]
    n = len(g)
    order = sorted(range(n), key=lambda i: (-g[i], i))
    w = kernel_weights(np.asarray(knn.distances).ravel(), gamma, sampling)
    w = w.reshape(knn.neighbors.shape)
    selected = [False] * n
    picks: list[int] = []
    stand: list[int] = []
    cursor = 0

    def take(u: int) -> None:
        picks.append(u)
        selected[u] = True
        gu = g[u]
        for t in range(knn.k):
            v = int(knn.neighbors[u, t])
            if v >= 0:
                g[v] = g[v] - gu * float(w[u, t])

    while len(picks) < min(budget, n):
        head = g[order[cursor]] if cursor < n else -np.inf
        if stand and (cursor >= n or max(g[s] for s in stand) >= head):
            best = max(range(len(stand)), key=lambda t: (g[stand[t]], -t))
            take(stand.pop(best))
            continue
        c = order[cursor]
        if not selected[c]:
            if cursor + 1 < n and g[c] < g[order[cursor + 1]]:
                stand.append(c)
            else:
                take(c)
        cursor += 1
    return np.array(picks, dtype=np.int64)


# --- random cases for tests ---------------------------------------------------------------


def grid_knn(rng: np.random.Generator, n: int, k: int, side: int = 3) -> KnnGraph:
    """kNN lists of n points on a small integer grid: many equal distances (ties)."""
    return knn_bruteforce(rng.integers(0, side, size=(n, 2)).astype(np.float64), k)


def random_symmetric_csr(rng: np.random.Generator, n: int, n_pairs: int):
    """(indptr, indices) of a random undirected simple graph, rows sorted."""
    rows: list[set[int]] = [set() for _ in range(n)]
    for _ in range(n_pairs if n > 1 else 0):
        a, b = (int(v) for v in rng.choice(n, size=2, replace=False))
        rows[a].add(b)
        rows[b].add(a)
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.array([j for r in rows for j in sorted(r)], dtype=np.int32)
    return indptr, indices


def dyadic(rng: np.random.Generator, size: int) -> np.ndarray:
    """Weights in {1/8, 1/4, 1/2, 1}: products and differences with small integers stay
    exact, so equal scores really are equal and the tie rule decides."""
    return 2.0 ** -rng.integers(0, 4, size=size).astype(np.float64)
