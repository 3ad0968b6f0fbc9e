"""Sharded, partitioned, multi-worker builds give exactly the graph of the plain build."""

import logging

import numpy as np
import pytest
from distributed import Client, LocalCluster

from d2scale.graph import build_knn_graph
from d2scale.graph.shards import part_rows, plan_shards
from d2scale.types import ArrayBlocks


def clip_like(n: int, dim: int = 64, seed: int = 0, latent: int = 12) -> np.ndarray:
    """CLIP-like unit vectors (as d2scale.synth) with 1% exact duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 150), latent))
    z = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, latent))
    proj = np.linalg.qr(rng.standard_normal((dim, latent)))[0]
    x = 0.5 + z @ proj.T / np.sqrt(latent) + 0.35 / np.sqrt(dim) * rng.standard_normal((n, dim))
    dup = rng.choice(np.arange(1, n), n // 100, replace=False)
    x[dup] = x[(rng.random(dup.size) * dup).astype(int)]
    x[40:60] = x[3]  # one group larger than k + margin
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


N = 6000
X = clip_like(N, seed=7)
ROW_BYTES = {"ivf": 64 * 6 + 8, "exact": 64 * 4 + 8}  # what a build budgets per row


def build(block_rows: int, shards: int = 1, client=None, index: str = "ivf"):
    limit = ROW_BYTES[index] * N // shards + 1 if shards > 1 else None
    graph, info = build_knn_graph(
        ArrayBlocks(X, block_rows), n_neighbors=8, index=index, memory_limit=limit, client=client
    )
    assert len(info["shards"]) == shards
    return graph, info


@pytest.fixture(scope="module")
def plain():
    return {index: build(N, index=index) for index in ("ivf", "exact")}


@pytest.mark.parametrize("index", ["ivf", "exact"])
@pytest.mark.parametrize(("block_rows", "shards"), [(1000, 1), (2500, 3), (777, 4)])
def test_partitions_and_shards_do_not_change_the_graph(plain, index, block_rows, shards):
    graph, info = build(block_rows, shards, index=index)
    ref, ref_info = plain[index]
    np.testing.assert_array_equal(graph.neighbors, ref.neighbors)
    np.testing.assert_array_equal(graph.distances, ref.distances)
    for key in ("nprobe", "candidates", "recall", "pca_dim"):
        assert info.get(key) == ref_info.get(key)


@pytest.mark.parametrize("processes", [False, True])
def test_worker_count_does_not_change_the_graph(plain, processes):
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=processes,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        graph, _ = build(1200, shards=2, client=client)
    np.testing.assert_array_equal(graph.neighbors, plain["ivf"][0].neighbors)
    np.testing.assert_array_equal(graph.distances, plain["ivf"][0].distances)


def test_duplicates_rank_by_index():
    graph, _ = build(N, index="exact")
    assert list(graph.neighbors[3]) == list(range(40, 48))
    assert not graph.distances[3].any()


def test_plan_shards_fits_the_budget():
    assert plan_shards(10, 100, 10**6) == [[0, 10]]
    plan = plan_shards(1000, 100, 30_000)
    assert len(plan) == 4 and plan[0][0] == 0 and plan[-1][1] == 1000
    assert all(b - a <= 300 for a, b in plan)
    assert all(p[1] == q[0] for p, q in zip(plan, plan[1:], strict=False))
    assert plan_shards(3, 100, 1) == [[0, 1], [1, 2], [2, 3]]


def test_part_rows_groups_by_partition():
    offsets = np.array([0, 5, 5, 12])
    got = part_rows(offsets, np.array([0, 4, 5, 11]))
    assert {p: r.tolist() for p, r in got.items()} == {0: [0, 4], 2: [0, 6]}
