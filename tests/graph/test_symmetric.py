"""symmetrize against the plain oracle: union of directions, min distance, sorted rows."""

import numpy as np
import pytest
from oracle import grid_knn, knn_bruteforce, symmetric_lists, to_csr

from d2scale.errors import D2ScaleError
from d2scale.graph import symmetric
from d2scale.graph.store import load_graph
from d2scale.graph.symmetric import symmetrize
from d2scale.types import KnnGraph


def assert_matches_oracle(knn: KnnGraph, **kwargs) -> None:
    csr = symmetrize(knn, **kwargs)
    indptr, indices, dists = to_csr(symmetric_lists(knn))
    assert csr.indices.dtype == np.int32 and csr.distances.dtype == np.float32
    np.testing.assert_array_equal(csr.indptr, indptr)
    np.testing.assert_array_equal(csr.indices, indices)
    np.testing.assert_array_equal(csr.distances, dists)


def messy_knn(rng: np.random.Generator, n: int, k: int) -> KnnGraph:
    """Random lists with -1 padding, self-loops, repeated ids and equal distances; the two
    directions of an edge often carry different distances."""
    neighbors = rng.integers(-1, n, size=(n, k))
    distances = (rng.integers(0, 4, size=(n, k)) / 4).astype(np.float32)
    distances[neighbors == -1] = np.inf
    return KnnGraph(neighbors, distances)


def test_random_lists_match_oracle():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n, k = int(rng.integers(1, 30)), int(rng.integers(1, 11))
        assert_matches_oracle(messy_knn(rng, n, k), n_chunks=1 + trial % 3)


def test_true_knn_graphs_match_oracle():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        assert_matches_oracle(grid_knn(rng, n, int(rng.integers(1, min(n, 11)))))


def test_many_blocks_and_threads_give_the_same_graph(monkeypatch):
    rng = np.random.default_rng(2)
    knn = knn_bruteforce(rng.normal(size=(300, 3)), 6)
    expected = symmetrize(knn, n_chunks=1)
    monkeypatch.setattr(symmetric, "BLOCK_ROWS", 4)  # 75 blocks
    for n_chunks in (1, 2, 3, 7):
        assert_matches_oracle(knn, n_chunks=n_chunks)
        got = symmetrize(knn, n_chunks=n_chunks)
        np.testing.assert_array_equal(got.indices, expected.indices)


def test_isolated_nodes_have_empty_rows():
    knn = KnnGraph(
        np.array([[1, -1], [0, -1], [-1, -1], [3, -1]]),
        np.array([[1, np.inf], [2, np.inf], [np.inf] * 2, [5, np.inf]], np.float32),
    )
    csr = symmetrize(knn)
    np.testing.assert_array_equal(csr.indptr, [0, 1, 2, 2, 2])  # 3's self-loop is dropped
    np.testing.assert_array_equal(csr.distances, [1, 1])  # the smaller of 1 and 2


@pytest.mark.parametrize("bad", [5, -2])
def test_out_of_range_ids_raise(bad):
    knn = KnnGraph(np.array([[1], [bad], [0]]), np.ones((3, 1), np.float32))
    with pytest.raises(D2ScaleError, match="outside"):
        symmetrize(knn)


@pytest.mark.parametrize("bad", [np.nan, -1.0, np.inf])
def test_bad_distances_raise(bad):
    knn = KnnGraph(np.array([[1], [0]]), np.array([[1.0], [bad]], np.float32))
    with pytest.raises(D2ScaleError, match="distances"):
        symmetrize(knn)


def test_shape_mismatch_raises():
    with pytest.raises(D2ScaleError, match="same N×k shape"):
        symmetrize(KnnGraph(np.zeros((3, 2), np.int64), np.zeros((3, 1), np.float32)))


def test_memory_mapped_input_given_back_page_by_page_gives_the_same_graph(tmp_path, monkeypatch):
    """Pages of the mapped input and of the routed records are returned to the system as
    the passes go (chunks of 1000 rows, 16 merge rounds): nothing needed later is lost."""
    rng = np.random.default_rng(3)
    n = 20_000
    knn = KnnGraph(rng.integers(-1, n, size=(n, 5)), rng.random((n, 5), dtype=np.float32))
    indptr, indices, dists = to_csr(symmetric_lists(knn))
    np.save(tmp_path / "neighbors.npy", knn.neighbors)
    np.save(tmp_path / "distances.npy", knn.distances)
    mapped, _ = load_graph(str(tmp_path), mmap=True)
    monkeypatch.setattr(symmetric, "SOURCE_ROWS", 1000)
    for weight_room in (False, True):
        got = symmetrize(mapped, weight_room=weight_room)
        np.testing.assert_array_equal(got.indptr, indptr)
        np.testing.assert_array_equal(got.indices, indices)
        np.testing.assert_array_equal(got.distances, dists)
    np.testing.assert_array_equal(mapped.neighbors, knn.neighbors)  # read back from the file
