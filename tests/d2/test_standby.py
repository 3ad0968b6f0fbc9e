"""The standby heuristic against a plain transcription of the DataComp reference loop."""

import numpy as np
import pytest
from oracle import grid_knn, standby

from d2scale.d2.standby import standby_order
from d2scale.errors import D2ScaleError
from d2scale.types import KnnGraph


@pytest.mark.parametrize("sampling", ["weighted", "absolute"])
def test_equals_the_reference_loop(sampling):
    rng = np.random.default_rng(0)
    used_standby = 0
    for trial in range(60):
        n = int(rng.integers(1, 40))
        knn = grid_knn(rng, n, int(rng.integers(1, 6)), side=4)
        f = rng.integers(-1, 5, size=n).astype(float) if trial % 2 else rng.normal(size=n)
        budget = n if trial % 3 == 0 else int(rng.integers(0, n + 1))  # n: runs off the end
        gamma = (0.1, 1.0)[trial % 2]
        expected = standby(knn, f, gamma, budget, sampling)
        got = standby_order(knn, f, gamma=gamma, budget=budget, sampling=sampling)
        np.testing.assert_array_equal(got, expected)
        static = np.argsort(-f, kind="stable")[:budget]
        used_standby += not np.array_equal(got, static)
    assert used_standby > 10  # the standby list changed the order in many cases


def test_deferred_node_is_picked_from_standby():
    # 0 → 1 (weight 1): picking 0 drops 1 below 2, so 1 waits in standby, then 2 is taken
    knn = KnnGraph(np.array([[1], [-1], [-1]]), np.array([[0.0], [np.inf], [np.inf]], np.float32))
    order = standby_order(knn, np.array([5.0, 4.0, 3.0]), gamma=1.0, budget=3)
    np.testing.assert_array_equal(order, [0, 2, 1])


def test_budget_and_shape_are_checked():
    knn = KnnGraph(np.array([[1], [0]]), np.ones((2, 1), np.float32))
    with pytest.raises(D2ScaleError, match="budget"):
        standby_order(knn, np.zeros(2), gamma=1.0, budget=3)
    with pytest.raises(D2ScaleError, match="forward"):
        standby_order(knn, np.zeros(3), gamma=1.0, budget=1)
