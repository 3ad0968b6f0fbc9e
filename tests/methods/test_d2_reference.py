"""d2-reference against a line-by-line transcription of the seed's DataComp script."""

import numpy as np
import pytest
from oracle import grid_knn

from d2scale.errors import D2ScaleError
from d2scale.methods.d2_reference import reference_order, search_results
from d2scale.types import KnnGraph

EPS = 1e-7


def script(ids, sq, scores, gamma, budget):
    """``initialize_graph_helper`` + ``iterative_selection`` of select_d2_datacomp.py, as
    written there (NumPy fancy indexing, a Python standby list); past the end of the static
    order (where the script raises IndexError) the last row is compared with nothing."""
    top_k = ids.shape[1] - 1
    d_raw = sq.astype(np.float64)
    d = d_raw - np.tile(np.expand_dims(d_raw[:, 0].transpose(), 1), (1, top_k + 1))
    d, nb = d[:, 1 : top_k + 1], ids[:, 1 : top_k + 1]
    dist = np.exp(-d * 1.0) * np.maximum(scores[nb], np.ones_like(nb) * EPS)
    g = np.sum(dist, axis=-1) + np.maximum(scores, np.ones_like(scores) * EPS)
    forward = g.copy()
    n = g.shape[0]
    order = np.argsort(g, kind="stable")[::-1]
    counter, selected, picks, standby = 0, np.zeros(n), [], []

    def take(u):
        picks.append(u)
        g[nb[u]] = g[nb[u]] - g[u] * np.exp(-d[u] * gamma)
        selected[u] = 1

    while len(picks) < budget:
        if standby and (counter >= n or np.max(g[standby]) >= g[order[counter]]):
            take(standby.pop(int(np.argmax(g[standby]))))
            continue
        c = order[counter]
        if selected[c] == 0:
            if counter + 1 < n and g[c] < g[order[counter + 1]]:
                standby.append(c)
            else:
                take(c)
        counter += 1
    return np.array(picks, dtype=np.int64), forward


def test_hand_checked_three_rows():
    # 0 → 1 (d=1), 1 → 0 (d=1), 2 → 1 (d=2); the script's search puts each row first
    knn = KnnGraph(np.array([[1], [0], [1]]), np.array([[1.0], [1.0], [2.0]], np.float32))
    ids, sq = search_results(knn)
    np.testing.assert_array_equal(ids, [[0, 1], [1, 0], [2, 1]])
    np.testing.assert_array_equal(sq, [[0, 1], [0, 1], [0, 4]])
    scores = np.array([0.5, 0.4, 0.45])
    order, forward = reference_order(ids, sq, scores, gamma=1.0)
    e1, e4 = np.exp(-1.0), np.exp(-4.0)
    np.testing.assert_allclose(forward, [0.5 + e1 * 0.4, 0.4 + e1 * 0.5, 0.45 + e4 * 0.4])
    # 0 is picked and lowers 1 below 2, so 1 waits in standby; 2 is picked, then 1
    np.testing.assert_array_equal(order, [0, 2, 1])
    np.testing.assert_array_equal(reference_order(ids, sq, scores, budget=2)[0], [0, 2])


def test_own_score_is_clamped_and_ties_go_to_the_higher_row():
    knn = KnnGraph(np.array([[1], [0], [-1]]), np.array([[3.0], [3.0], [np.inf]], np.float32))
    ids, sq = search_results(knn)
    order, forward = reference_order(ids, sq, np.array([-0.2, -0.2, 0.5]), gamma=1.0)
    assert forward[2] == 0.5 and forward[0] == forward[1]
    assert forward[0] == pytest.approx(1e-7 + np.exp(-9.0) * 1e-7)  # not -0.2 + …
    np.testing.assert_array_equal(order, [2, 1, 0])  # 0 and 1 tie: the higher row first


@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_equals_the_script_on_random_graphs(gamma):
    rng = np.random.default_rng(11)
    for trial in range(60):
        n = int(rng.integers(2, 40))
        knn = grid_knn(rng, n, int(rng.integers(1, min(n, 6))), side=4)
        ids, sq = search_results(knn)
        if trial % 3 == 0:  # raw results whose first entry is not the row itself
            ids[:, [0, 1]] = ids[:, [1, 0]]
            sq[:, 0] = sq[:, 1] - rng.random(n)
        scores = rng.integers(-2, 5, size=n) / 4 if trial % 2 else rng.normal(size=n)
        budget = int(rng.integers(1, n + 1))
        want, want_forward = script(ids, sq, scores, gamma, budget)
        got, forward = reference_order(ids, sq, scores, gamma=gamma, budget=budget)
        np.testing.assert_array_equal(forward, want_forward)
        np.testing.assert_array_equal(got, want)


def test_bad_input_is_one_sentence():
    ids, sq = search_results(grid_knn(np.random.default_rng(0), 5, 2))
    with pytest.raises(D2ScaleError, match="5 finite numbers"):
        reference_order(ids, sq, np.array([0.1, np.nan, 0, 0, 0]))
    with pytest.raises(D2ScaleError, match="budget"):
        reference_order(ids, sq, np.zeros(5), budget=6)
