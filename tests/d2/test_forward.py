"""Forward pass: bit-identical to the oracle's left-to-right float64 sum."""

import numpy as np
import pytest
from oracle import forward, grid_knn, knn_bruteforce

from d2scale.backends import cuda_available
from d2scale.d2 import forward as forward_module
from d2scale.d2 import weights as weights_module
from d2scale.d2.forward import forward_on, forward_scores
from d2scale.d2.weights import forward_weights, kernel_weights, weights_in_place
from d2scale.errors import D2ScaleError
from d2scale.graph.symmetric import symmetrize
from d2scale.types import CsrGraph, KnnGraph


@pytest.mark.parametrize("mode", ["sum", "product"])
@pytest.mark.parametrize("gamma_forward", [0.0, 0.3, 1.0])
def test_bit_identical_to_oracle(mode, gamma_forward):
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(1, 40))
        csr = symmetrize(grid_knn(rng, n, int(rng.integers(1, 11)), side=5))
        scores = rng.normal(0.2, 1.0, size=n)  # negatives: the eps clamp is exercised
        got = forward_scores(csr, scores, gamma_forward=gamma_forward, mode=mode)
        expected = forward(csr.indptr, csr.indices, csr.distances, scores, gamma_forward, mode)
        np.testing.assert_array_equal(got, expected)


def test_eps_clamps_neighbour_scores_and_isolated_nodes_keep_theirs():
    csr = CsrGraph(
        np.array([0, 1, 2, 2]), np.array([1, 0], np.int32), np.array([0.0, 0.0], np.float32)
    )  # weights exactly 1
    s = np.array([-3.0, 2.0, 5.0])
    np.testing.assert_array_equal(forward_scores(csr, s), [-3.0 + 2.0, 2.0 + 1e-7, 5.0])
    np.testing.assert_array_equal(
        forward_scores(csr, s, mode="product", eps=0.5), [-3.0 * 2.0, 2.0 * 0.5, 0.0]
    )


def test_weights_are_the_documented_numpy_expression():
    d = np.random.default_rng(1).random(1000).astype(np.float32) * 4
    csr = CsrGraph(np.array([0, 1000]), np.zeros(1000, np.int32), d)
    np.testing.assert_array_equal(forward_weights(csr, 0.7), np.exp(-0.7 * d.astype(np.float64)))


def test_weights_computed_in_slices_equal_one_numpy_call(monkeypatch):
    monkeypatch.setattr(weights_module, "WEIGHT_SLICE", 1000)
    d = np.random.default_rng(4).random(3_517).astype(np.float32) * 3
    for gamma in (0.1, 1.0):
        np.testing.assert_array_equal(
            kernel_weights(d, gamma), np.exp(-gamma * d.astype(np.float64))
        )


def test_many_rows_in_threads_match_one_thread():
    rng = np.random.default_rng(2)
    n = 150_000  # above the threading threshold
    knn = KnnGraph(rng.integers(0, n, size=(n, 3)), rng.random((n, 3), dtype=np.float32))
    csr = symmetrize(knn)
    s = rng.random(n)
    got = forward_scores(csr, s)
    rows = rng.choice(n, 50, replace=False)
    for i in rows:
        lo, hi = csr.indptr[i], csr.indptr[i + 1]
        acc = 0.0
        for w, j in zip(
            np.exp(-csr.distances[lo:hi].astype(np.float64)), csr.indices[lo:hi], strict=True
        ):
            acc = acc + w * max(s[j], 1e-7)
        assert got[i] == s[i] + acc


def test_auto_device_without_gpu_is_the_cpu_path():
    if cuda_available():
        pytest.skip("a GPU is present")
    csr = symmetrize(grid_knn(np.random.default_rng(3), 20, 4))
    s = np.arange(20.0)
    np.testing.assert_array_equal(forward_scores(csr, s, device="auto"), forward_scores(csr, s))
    with pytest.raises(D2ScaleError):
        forward_scores(csr, s, device="cuda")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "mean"}, "mode"), ({"device": "tpu"}, "device"), ({"n": 3}, "expected 4 scores")],
)
def test_bad_arguments_raise(kwargs, match):
    csr = CsrGraph(np.zeros(5, np.int64), np.empty(0, np.int32), np.empty(0, np.float32))
    scores = np.zeros(kwargs.pop("n", 4))
    with pytest.raises(D2ScaleError, match=match):
        forward_scores(csr, scores, **kwargs)


@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_weights_in_place_are_numpys_and_take_the_distances_memory(monkeypatch, gamma):
    monkeypatch.setattr(weights_module, "WEIGHT_SLICE", 7)  # many rounds, threads in each
    knn = knn_bruteforce(np.random.default_rng(5).normal(size=(300, 3)), 6)
    csr = symmetrize(knn, weight_room=True)
    plain = symmetrize(knn)
    np.testing.assert_array_equal(csr.distances, plain.distances)
    w = weights_in_place(csr, gamma)
    assert w.dtype == np.float64 and np.shares_memory(w, csr.distances)
    np.testing.assert_array_equal(w, np.exp(-gamma * plain.distances.astype(np.float64)))
    kept = plain.distances.copy()  # without room: a new array, the distances untouched
    np.testing.assert_array_equal(weights_in_place(plain, gamma), w)
    np.testing.assert_array_equal(plain.distances, kept)


@pytest.mark.parametrize("mode", ["sum", "product"])
def test_forward_in_slices_and_with_given_weights_equals_oracle(monkeypatch, mode):
    monkeypatch.setattr(forward_module, "WEIGHT_SLICE", 5)  # slices of a few rows
    rng = np.random.default_rng(6)
    csr = symmetrize(grid_knn(rng, 60, 8, side=4))
    scores = rng.normal(0.2, 1.0, size=60)
    expected = forward(csr.indptr, csr.indices, csr.distances, scores, 0.3, mode)
    np.testing.assert_array_equal(
        forward_scores(csr, scores, gamma_forward=0.3, mode=mode), expected
    )
    w = kernel_weights(csr.distances, 0.3)
    np.testing.assert_array_equal(forward_on("cpu", csr, scores, 0.3, mode, weights=w), expected)
