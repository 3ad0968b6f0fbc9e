"""Bucketed mode equals the global greedy on the graph without cross-bucket edges."""

import numpy as np
import pytest
from oracle import (
    drop_cross_edges,
    forward,
    greedy,
    grid_knn,
    kernel_weights,
    symmetric_lists,
    to_csr,
)

from d2scale.d2 import bucketed
from d2scale.d2.bucketed import bucketed_order, contiguous_buckets
from d2scale.d2.reverse import reverse_order
from d2scale.d2.weights import reverse_weights
from d2scale.errors import D2ScaleError
from d2scale.graph.symmetric import symmetrize


def bucket_cases(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for trial in range(count):
        n = int(rng.integers(1, 40))
        knn = grid_knn(rng, n, int(rng.integers(1, 11)))
        csr = symmetrize(knn)
        g = forward(csr.indptr, csr.indices, csr.distances, rng.integers(-1, 4, size=n))
        if trial % 2:
            labels = contiguous_buckets(n, int(rng.integers(1, 6)))
        else:  # arbitrary label values, buckets interleaved in id order
            labels = rng.choice([-7, 0, 3, 1000], size=n)
        yield knn, csr, g, labels


def oracle_bucketed(knn, g, labels, gamma):
    indptr, indices, dists = to_csr(drop_cross_edges(symmetric_lists(knn), labels))
    return greedy(indptr, indices, kernel_weights(dists, gamma), g)[0]


@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_equals_oracle_on_the_graph_without_cross_edges(gamma):
    rng = np.random.default_rng(0)
    for knn, csr, g, labels in bucket_cases(1, 40):
        expected = oracle_bucketed(knn, g, labels, gamma)
        budget = int(rng.integers(0, csr.n + 1))
        got = bucketed_order(csr, g, reverse_weights(csr, gamma), labels, budget)
        np.testing.assert_array_equal(got, expected[:budget])


def test_one_bucket_is_the_exact_greedy():
    for _, csr, g, _ in bucket_cases(2, 10):
        np.testing.assert_array_equal(
            reverse_order(csr, g, gamma=1.0, buckets=1), reverse_order(csr, g, gamma=1.0)
        )


def test_same_order_whatever_the_task_split(monkeypatch):
    rng = np.random.default_rng(3)
    knn = grid_knn(rng, 60, 5, side=8)
    csr = symmetrize(knn)
    g = forward(csr.indptr, csr.indices, csr.distances, rng.integers(0, 3, size=60))
    w = reverse_weights(csr, 1.0)
    labels = rng.integers(0, 9, size=60)
    expected = oracle_bucketed(knn, g, labels, 1.0)
    for per_worker in (1, 2, 100):
        monkeypatch.setattr(bucketed, "TASKS_PER_WORKER", per_worker)
        np.testing.assert_array_equal(bucketed_order(csr, g, w, labels, None), expected)


def test_distributed_client_gives_the_same_order():
    distributed = pytest.importorskip("distributed")
    _, csr, g, labels = list(bucket_cases(4, 3))[-1]
    w = reverse_weights(csr, 1.0)
    expected = bucketed_order(csr, g, w, labels, None)
    with distributed.Client(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        np.testing.assert_array_equal(
            bucketed_order(csr, g, w, labels, None, client=client), expected
        )


def test_contiguous_buckets_are_near_equal_id_ranges():
    labels = contiguous_buckets(10, 3)
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert contiguous_buckets(3, 5).tolist() == [0, 1, 3]  # more buckets than nodes
    assert contiguous_buckets(0, 4).size == 0
    with pytest.raises(D2ScaleError, match="buckets"):
        contiguous_buckets(10, 0)


def test_bad_labels_raise():
    _, csr, g, _ = next(bucket_cases(5, 1))
    with pytest.raises(D2ScaleError, match="labels"):
        bucketed_order(csr, g, reverse_weights(csr, 1.0), np.zeros(csr.n + 1, int), None)
    with pytest.raises(D2ScaleError, match="labels"):
        bucketed_order(csr, g, reverse_weights(csr, 1.0), np.zeros(csr.n), None)
