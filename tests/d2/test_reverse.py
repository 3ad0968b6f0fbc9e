"""Exact greedy against the O(N²) oracle: ties, negative scores, prefixes, continuation."""

import numpy as np
import pytest
from oracle import dyadic, forward, greedy, grid_knn, kernel_weights, random_symmetric_csr

from d2scale.d2.exact import greedy_continue
from d2scale.d2.reverse import reverse_order
from d2scale.d2.weights import reverse_weights
from d2scale.errors import D2ScaleError
from d2scale.graph.symmetric import symmetrize
from d2scale.types import CsrGraph


def knn_cases(seed: int, count: int):
    """Symmetrised kNN graphs (k 1..10, grid ties, isolated nodes) with forward scores
    from integer or Gaussian scores, some negative."""
    rng = np.random.default_rng(seed)
    for trial in range(count):
        n = int(rng.integers(1, 40))
        csr = symmetrize(grid_knn(rng, n, int(rng.integers(1, 11))))
        if trial % 3 == 0:  # some nodes isolated
            csr = drop_rows(csr, rng.random(n) < 0.3)
        s = rng.integers(-2, 4, size=n).astype(float) if trial % 2 else rng.normal(size=n)
        yield csr, forward(csr.indptr, csr.indices, csr.distances, s)


def drop_rows(csr: CsrGraph, isolate: np.ndarray) -> CsrGraph:
    """The graph without any edge touching an isolated node."""
    src = np.repeat(np.arange(csr.n), np.diff(csr.indptr))
    keep = ~isolate[src] & ~isolate[csr.indices]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(src[keep], minlength=csr.n))])
    return CsrGraph(indptr, csr.indices[keep], csr.distances[keep])


@pytest.mark.parametrize("gamma", [0.1, 1.0])
@pytest.mark.parametrize("sampling", ["weighted", "absolute"])
def test_full_order_equals_oracle(gamma, sampling):
    negative_picks = 0
    for csr, g in knn_cases(0, 40):
        w = kernel_weights(csr.distances, gamma, sampling)
        expected, picked = greedy(csr.indptr, csr.indices, w, g)
        np.testing.assert_array_equal(
            reverse_order(csr, g, gamma=gamma, sampling=sampling), expected
        )
        negative_picks += int((picked < 0).sum())
    assert negative_picks > 0  # the regime where updates raise neighbours is covered


def test_every_budget_is_a_prefix():
    for csr, g in knn_cases(1, 15):
        full = reverse_order(csr, g, gamma=0.1)
        for budget in range(csr.n + 1):
            np.testing.assert_array_equal(
                reverse_order(csr, g, gamma=0.1, budget=budget), full[:budget]
            )


def test_dyadic_weights_and_integer_scores_exercise_ties():
    rng = np.random.default_rng(2)
    ties = 0
    for _ in range(60):
        n = int(rng.integers(2, 60))
        indptr, indices = random_symmetric_csr(rng, n, int(rng.integers(0, 3 * n)))
        w = dyadic(rng, len(indices))
        g = rng.integers(-3, 4, size=n).astype(float)
        expected, picked = greedy(indptr, indices, w, g)
        got = greedy_continue(indptr, indices, w, g.copy(), np.zeros(n, bool), n)
        np.testing.assert_array_equal(got, expected)
        ties += int(np.sum(picked[1:] == picked[:-1]))
    assert ties > 50


def test_continuing_from_a_partial_state_gives_the_tail():
    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(1, 50))
        indptr, indices = random_symmetric_csr(rng, n, int(rng.integers(0, 3 * n)))
        w = dyadic(rng, len(indices)) if trial % 2 else rng.random(len(indices))
        g = rng.normal(size=n)
        expected, picked = greedy(indptr, indices, w, g)
        values, selected = g.copy(), np.zeros(n, np.uint8 if trial % 2 else bool)
        cut = int(rng.integers(0, n + 1))
        head = greedy_continue(indptr, indices, w, values, selected, cut)
        assert int(selected.sum()) == cut and np.array_equal(
            np.flatnonzero(selected), np.sort(head)
        )
        tail = greedy_continue(indptr, indices, w, values, selected, n)  # more than is left
        np.testing.assert_array_equal(np.concatenate([head, tail]), expected)
        np.testing.assert_array_equal(values[expected], picked)  # picks keep their scores
        assert greedy_continue(indptr, indices, w, values, selected, 5).size == 0


def test_continuing_from_an_oracle_state():
    """The GPU driver hands over (values, selected) computed elsewhere."""
    rng = np.random.default_rng(4)
    n = 200
    indptr, indices = random_symmetric_csr(rng, n, 600)
    w = rng.random(len(indices))
    g = rng.normal(size=n)
    expected, picked = greedy(indptr, indices, w, g)
    values, selected = g.copy(), np.zeros(n, bool)
    for u, pu in zip(expected[:70], picked[:70], strict=True):  # replay 70 picks by hand
        selected[u] = True
        for e in range(indptr[u], indptr[u + 1]):
            if not selected[indices[e]]:
                values[indices[e]] -= w[e] * pu
    tail = greedy_continue(indptr, indices, w, values, selected, n)
    np.testing.assert_array_equal(tail, expected[70:])


def test_large_graph_with_a_deep_tree_equals_oracle():
    rng = np.random.default_rng(5)
    n = 3000  # many groups of 32: several tree levels
    indptr, indices = random_symmetric_csr(rng, n, 9000)
    csr = CsrGraph(indptr, indices, rng.integers(0, 8, len(indices)).astype(np.float32) / 4)
    g = forward(csr.indptr, csr.indices, csr.distances, rng.integers(0, 5, size=n))
    w = reverse_weights(csr, 1.0)
    expected, _ = greedy(csr.indptr, csr.indices, w, g)
    np.testing.assert_array_equal(reverse_order(csr, g, gamma=1.0), expected)


def test_forward_scores_are_not_modified():
    csr, g = next(knn_cases(6, 1))
    kept = g.copy()
    reverse_order(csr, g, gamma=1.0)
    np.testing.assert_array_equal(g, kept)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budget": 7}, "budget"),
        ({"budget": -1}, "budget"),
        ({"budget": 2.0}, "budget"),
        ({"sampling": "both"}, "sampling"),
        ({"greedy": "fast"}, "greedy"),
        ({"greedy": "standby"}, "kNN graph"),
        ({"device": "cuda", "buckets": 2}, "CPU"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    csr, g = (
        CsrGraph(np.zeros(7, np.int64), np.empty(0, np.int32), np.empty(0, np.float32)),
        np.zeros(6),
    )
    with pytest.raises(D2ScaleError, match=match):
        reverse_order(csr, g, gamma=1.0, **kwargs)


def test_greedy_continue_rejects_unusable_state():
    indptr, indices, w = np.zeros(4, np.int64), np.empty(0, np.int32), np.empty(0)
    with pytest.raises(D2ScaleError, match="float64"):
        greedy_continue(indptr, indices, w, np.zeros(3, np.float32), np.zeros(3, bool), 1)
    with pytest.raises(D2ScaleError, match="bool or uint8"):
        greedy_continue(indptr, indices, w, np.zeros(3), np.zeros(3, np.int64), 1)
    with pytest.raises(D2ScaleError, match="finite"):
        greedy_continue(indptr, indices, w, np.array([0, np.nan, 1]), np.zeros(3, bool), 1)
    # selected nodes may hold anything
    picks = greedy_continue(
        indptr, indices, w, np.array([0, -np.inf, 1]), np.array([0, 1, 0], bool), 3
    )
    np.testing.assert_array_equal(picks, [2, 0])


def test_prefetch_is_only_a_hint():
    """The greedy's prefetch changes nothing and does not fault past an array's end or on
    strided and zero-stride (broadcast) arrays."""
    from numba import njit

    from d2scale.d2._prefetch import prefetch

    @njit
    def touch(a, b, c):
        for i in (0, a.shape[0] - 1, a.shape[0], a.shape[0] + (1 << 20)):
            prefetch(a, i)
            prefetch(b, i)
            prefetch(c, i)
        return a.sum() + b.sum() + c.sum()

    a = np.arange(10.0)
    ones = np.broadcast_to(np.float64(1.0), (10,))
    assert touch(a, a[::3], ones) == 45.0 + 18.0 + 10.0
    np.testing.assert_array_equal(a, np.arange(10.0))
