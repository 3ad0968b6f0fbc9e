"""d2_order end to end against the oracle pipeline; validation; the graph loader."""

import subprocess
import sys

import numpy as np
import pytest
from oracle import d2_order as oracle_d2_order
from oracle import knn_bruteforce

from d2scale.d2 import D2Result, d2_order
from d2scale.errors import D2ScaleError
from d2scale.graph.store import load_graph
from d2scale.types import KnnGraph


@pytest.mark.parametrize("mode", ["sum", "product"])
@pytest.mark.parametrize("sampling", ["weighted", "absolute"])
@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_pipeline_equals_oracle(mode, sampling, gamma):
    rng = np.random.default_rng(0)
    for _ in range(6):
        n = int(rng.integers(2, 40))
        knn = knn_bruteforce(rng.integers(0, 4, size=(n, 3)).astype(float), int(rng.integers(1, 8)))
        scores = rng.integers(-1, 5, size=n).astype(float)
        budget = int(rng.integers(0, n + 1))
        expected, g = oracle_d2_order(
            knn, scores, gamma=gamma, gamma_forward=0.5, mode=mode, sampling=sampling, budget=budget
        )
        result = d2_order(
            knn, scores, gamma=gamma, gamma_forward=0.5, mode=mode, sampling=sampling, budget=budget
        )
        assert isinstance(result, D2Result)
        np.testing.assert_array_equal(result.order, expected)
        np.testing.assert_array_equal(result.forward, g)


@pytest.mark.parametrize("sampling", ["weighted", "absolute"])
def test_shared_weights_ties_and_near_ties_equal_oracle(sampling):
    """γf = γr (one weight array for both passes), grid graphs (equal distances), scores on
    a few values, some moved by an ulp or a few: forward scores tie or nearly tie."""
    rng = np.random.default_rng(7)
    near = 0
    for _ in range(12):
        n = int(rng.integers(20, 80))
        knn = knn_bruteforce(rng.integers(0, 4, size=(n, 2)).astype(float), int(rng.integers(2, 9)))
        scores = rng.integers(0, 3, size=n).astype(float) / 4
        nudged = rng.random(n) < 0.3
        scores[nudged] = (
            np.nextafter(scores[nudged], np.inf) + rng.integers(0, 3, nudged.sum()) * 1e-16
        )
        expected, g = oracle_d2_order(knn, scores, gamma=1.0, gamma_forward=1.0, sampling=sampling)
        result = d2_order(knn, scores, gamma=1.0, gamma_forward=1.0, sampling=sampling)
        np.testing.assert_array_equal(result.forward, g)
        np.testing.assert_array_equal(result.order, expected)
        gaps = np.diff(np.sort(g))
        near += int(np.sum((gaps > 0) & (gaps < 1e-12 * np.abs(g).max())))
    assert near > 0  # near-ties, not only exact ones, were decided


def small_knn():
    rng = np.random.default_rng(1)
    return knn_bruteforce(rng.normal(size=(30, 2)), 4), rng.random(30)


def test_variants_and_timings():
    knn, scores = small_knn()
    result = d2_order(knn, scores, gamma=1.0)
    assert set(result.stats["seconds"]) == {"symmetrize", "forward", "reverse"}
    assert result.stats["device"] == "cpu" and result.stats["variant"] == "exact"
    assert result.order.dtype == np.int64 and sorted(result.order) == list(range(30))
    assert 30 * 4 <= result.n_edges <= 2 * 30 * 4  # CSR entries: both directions
    for kwargs in ({"greedy": "standby"}, {"buckets": 3}, {"buckets": np.arange(30) % 2}):
        result = d2_order(knn, scores, gamma=1.0, budget=10, device="auto", **kwargs)
        assert len(set(result.order.tolist())) == 10
        assert result.stats["device"] == "cpu"  # auto → CPU for CPU-only variants


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scores": np.zeros(29)}, "30 numbers"),
        ({"scores": np.full(30, np.nan)}, "finite"),
        ({"budget": 31}, "budget"),
        ({"gamma": -1.0}, "gamma"),
        ({"gamma_forward": np.inf}, "gamma"),
        ({"mode": "max"}, "mode"),
        ({"sampling": "x"}, "sampling"),
        ({"greedy": "lazy"}, "greedy"),
    ],
)
def test_bad_arguments_raise_one_sentence(kwargs, match):
    knn, scores = small_knn()
    args = {"scores": scores, "gamma": 1.0, **kwargs}
    with pytest.raises(D2ScaleError, match=match):
        d2_order(knn, args.pop("scores"), **args)


def test_load_graph_memory_mapped_without_meta(tmp_path):
    knn, _ = small_knn()
    np.save(tmp_path / "neighbors.npy", knn.neighbors)
    with pytest.raises(D2ScaleError, match="missing graph file .*distances.npy"):
        load_graph(str(tmp_path), mmap=True)
    np.save(tmp_path / "distances.npy", knn.distances[:, :2])
    with pytest.raises(D2ScaleError, match="must hold floats of shape"):
        load_graph(str(tmp_path), mmap=True)
    np.save(tmp_path / "distances.npy", knn.distances)
    loaded, meta = load_graph(str(tmp_path), mmap=True)
    assert isinstance(loaded, KnnGraph) and meta == {}
    assert isinstance(loaded.neighbors, np.memmap)
    np.testing.assert_array_equal(loaded.neighbors, knn.neighbors)
    (tmp_path / "distances.npy").write_bytes(b"not npy")
    with pytest.raises(D2ScaleError, match="corrupt graph file"):
        load_graph(str(tmp_path), mmap=True)


def test_engine_import_is_lean():
    code = (
        "import sys, d2scale.d2, d2scale.graph.store, d2scale.cli.mp; "
        "print(sorted(m for m in ('dask', 'faiss', 'pyarrow', 'distributed') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_auto_device_falls_back_to_cpu_for_cpu_only_variants(monkeypatch):
    from d2scale import backends
    from d2scale.d2 import order

    monkeypatch.setattr(backends, "cuda_available", lambda: True)  # as on a GPU machine
    knn, scores = small_knn()
    for kwargs in ({"greedy": "standby"}, {"buckets": 3}):
        result = d2_order(knn, scores, gamma=1.0, device="auto", **kwargs)
        assert result.stats["device"] == "cpu"

    def no_forward(*args):
        raise AssertionError("the forward pass ran before the refusal")

    monkeypatch.setattr(order, "forward_on", no_forward)
    with pytest.raises(D2ScaleError, match="CPU only"):
        d2_order(knn, scores, gamma=1.0, device="cuda", greedy="standby")
