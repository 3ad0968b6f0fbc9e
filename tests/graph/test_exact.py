"""Exact kNN graphs equal a brute-force float64 reference, duplicates and close pairs included."""

import numpy as np
import pytest

from d2scale.errors import D2ScaleError
from d2scale.graph import build_knn_graph, scan
from d2scale.graph.shards import drop_self
from d2scale.types import ArrayBlocks


def reference_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64: k nearest other rows by (distance, index), self dropped by id."""
    x64 = x.astype(np.float64)
    d2 = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    idx = np.broadcast_to(np.arange(len(x)), d2.shape)
    order = np.lexsort((idx, d2), axis=1)[:, :k]
    return order, np.sqrt(np.take_along_axis(d2, order, axis=1)).astype(np.float32)


def with_duplicates(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors with a 30-fold duplicate group (larger than k + margin), pairs and a
    near-duplicate 1e-5 away."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    x[100:130] = x[7]
    x[200:203] = x[400]
    x[500] = x[501] + 1e-5 * rng.standard_normal(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("block_rows", [300, 1500])
def test_exact_graph_equals_brute_force_with_duplicates(block_rows):
    x = with_duplicates(1500, 24, seed=1)
    graph, info = build_knn_graph(ArrayBlocks(x, block_rows), n_neighbors=10, index="exact")
    ref_nbr, ref_dist = reference_knn(x, 10)
    np.testing.assert_array_equal(graph.neighbors, ref_nbr)
    np.testing.assert_array_max_ulp(graph.distances, ref_dist, maxulp=1)
    assert info["index"] == "exact" and info["recall"] == 1.0
    # the duplicate group: row 7's neighbours are its lowest-index copies at distance 0
    assert list(graph.neighbors[7]) == list(range(100, 110))
    assert list(graph.neighbors[105]) == [7, *range(100, 105), *range(106, 110)]
    assert not graph.distances[105].any()


def test_topk_keeps_self_and_ranks_by_distance_then_id():
    x = with_duplicates(800, 16, seed=2)
    pos, d2 = scan.topk(x, x, [(0, 800)], 12)
    x64 = x.astype(np.float64)
    ref = ((x64[:, None] - x64[None]) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(np.arange(800), ref.shape), ref), axis=1)[:, :12]
    np.testing.assert_array_equal(pos, order)
    np.testing.assert_allclose(d2, np.take_along_axis(ref, order, 1), rtol=1e-12, atol=1e-15)


def test_close_pairs_keep_their_precision():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((50, 768))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    x = np.concatenate([base, base + 1e-4 * rng.standard_normal(base.shape)]).astype(np.float32)
    graph, _ = build_knn_graph(ArrayBlocks(x), n_neighbors=1, index="exact")
    np.testing.assert_array_equal(graph.neighbors[:50, 0], np.arange(50, 100))
    x64 = x.astype(np.float64)
    true = np.linalg.norm(x64[:50] - x64[50:], axis=1)
    np.testing.assert_allclose(graph.distances[:50, 0], true, rtol=1e-6)
    # the float32 expansion ‖x‖² + ‖y‖² − 2x·y (faiss's BLAS path) is far off at this scale
    a, b = x[:50], x[50:]
    expansion = (a * a).sum(1) + (b * b).sum(1) - 2 * (a * b).sum(1)
    assert np.abs(np.sqrt(np.maximum(expansion, 0)) - true).max() > 0.005 * true.max()


def test_error_bound_covers_the_augmented_sgemm_distances():
    rng = np.random.default_rng(4)
    xb = rng.standard_normal((3000, 256)).astype(np.float32) * 0.1
    xq = xb[:200] + 1e-3 * rng.standard_normal((200, 256)).astype(np.float32)
    qa = np.concatenate([xq, np.ones((200, 1), np.float32)], axis=1)
    approx = (xq * xq).sum(1)[:, None] + qa @ scan.augment(xb).T
    exact = ((xq[:, None].astype(np.float64) - xb[None].astype(np.float64)) ** 2).sum(-1)
    norms = lambda v: np.linalg.norm(v.astype(np.float64), axis=1)  # noqa: E731
    eps = scan.l2_error_bound(257, norms(xq), float(norms(xb).max()))
    assert (np.abs(approx - exact) <= eps[:, None]).all()


def test_merge_and_drop_self():
    ids = [np.array([[3, 5, -1]]), np.array([[4, 2, 9]])]
    d = [np.array([[0.0, 1.0, np.inf]]), np.array([[1.0, 0.0, 2.0]])]
    i, dd = scan.merge(list(zip(ids, d, strict=True)), 4)
    assert i.tolist() == [[2, 3, 4, 5]] and dd.tolist() == [[0, 0, 1, 1]]
    kept, kd = drop_self(i, dd, np.array([3]), 3)
    assert kept.tolist() == [[2, 4, 5]] and kd.tolist() == [[0, 1, 1]]
    padded = scan.merge([(np.array([[1]]), np.array([[0.5]]))], 3)
    assert padded[0].tolist() == [[1, -1, -1]] and padded[1][0, 1:].tolist() == [np.inf] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"n_neighbors": 20},
            r"n_neighbors \(20\) must be smaller than the number of samples \(20\)",
        ),
        ({"n_neighbors": 0}, "'n_neighbors' parameter must be an int ≥ 1"),
        ({"n_neighbors": 3, "index": "hnsw"}, "'index' parameter must be one of auto, exact, ivf"),
        ({"n_neighbors": 3, "recall": 1.5}, r"'recall' parameter must be in \(0, 1\]"),
        ({"n_neighbors": 3, "device": "tpu"}, "'device' parameter must be one of"),
        ({"n_neighbors": 3, "memory_limit": -1}, "'memory_limit' parameter must be bytes > 0"),
    ],
)
def test_parameter_errors(kwargs, message):
    x = np.eye(20, 8, dtype=np.float32) + 1
    with pytest.raises(D2ScaleError, match=message):
        build_knn_graph(ArrayBlocks(x), **kwargs)


def test_empty_input_is_an_error():
    with pytest.raises(D2ScaleError, match="no embeddings"):
        build_knn_graph(ArrayBlocks(np.empty((0, 8), np.float32)), n_neighbors=1)


def test_cuda_without_gpu_is_an_error():
    if scan.gpu_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(D2ScaleError, match="--device cuda needs a CUDA GPU that CuPy"):
        build_knn_graph(ArrayBlocks(np.ones((5, 4), np.float32)), n_neighbors=1, device="cuda")
