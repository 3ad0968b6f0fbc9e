"""Sharded, partitioned, multi-worker builds give exactly the graph of the plain build;
tasks are single-threaded and return their results."""

import logging

import numpy as np
import pytest
from distributed import Client, LocalCluster
from threadpoolctl import threadpool_info

from d2scale.errors import D2ScaleError
from d2scale.graph import build_knn_graph, scan
from d2scale.graph.shards import part_rows, plan_items, plan_shards
from d2scale.types import ArrayBlocks


def clip_like(n: int, dim: int = 64, seed: int = 0, latent: int = 12) -> np.ndarray:
    """CLIP-like unit vectors (as d2scale.pool.synth) with 1% exact duplicates."""
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


def build(block_rows: int, limit: int | None = None, client=None, index: str = "ivf", **kw):
    return build_knn_graph(
        ArrayBlocks(X, block_rows), n_neighbors=8, index=index, memory_limit=limit,
        client=client, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def plain():
    return {index: build(N, index=index) for index in ("ivf", "exact")}


@pytest.mark.parametrize(
    ("block_rows", "limit"), [(1000, None), (2500, 1_600_000), (777, 1_300_000)]
)
def test_partitions_and_shards_do_not_change_the_graph(plain, block_rows, limit):
    graph, info = build(block_rows, limit)
    ref, ref_info = plain["ivf"]
    assert (info["shards"] > 1) == (limit is not None) and ref_info["shards"] == 1
    np.testing.assert_array_equal(graph.neighbors, ref.neighbors)
    np.testing.assert_array_equal(graph.distances, ref.distances)
    for key in ("nprobe", "candidates", "recall", "pca_dim"):
        assert info.get(key) == ref_info.get(key)


@pytest.mark.parametrize("block_rows", [1000, 777])
def test_partitions_do_not_change_the_exact_graph(plain, block_rows):
    graph, _ = build(block_rows, index="exact")
    np.testing.assert_array_equal(graph.neighbors, plain["exact"][0].neighbors)
    np.testing.assert_array_equal(graph.distances, plain["exact"][0].distances)


def test_exact_search_beyond_the_memory_limit_is_refused():
    with pytest.raises(D2ScaleError, match="exact search holds all 6,000 embeddings"):
        build(N, 500_000, index="exact")


@pytest.mark.parametrize(
    "processes",  # worker processes: also tests/test_cluster.py (a scheduler + 2 processes)
    [False, pytest.param(True, marks=pytest.mark.slow)],
)
def test_worker_count_does_not_change_the_graph(plain, processes):
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=processes,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        graph, info = build(1200, 1_600_000, client=client)
    assert info["shards"] > 1
    np.testing.assert_array_equal(graph.neighbors, plain["ivf"][0].neighbors)
    np.testing.assert_array_equal(graph.distances, plain["ivf"][0].distances)


@pytest.mark.parametrize("index", ["exact", "ivf"])
def test_duplicates_rank_by_index(plain, index):
    graph, info = plain[index]
    assert list(graph.neighbors[3]) == list(range(40, 48))
    assert not graph.distances[3].any()
    assert list(graph.neighbors[40]) == [3, *range(41, 48)]
    assert info["unique_rows"] < N - 19


BLAS_THREADS: list[int] = []
ORIGINAL_IP = scan.ip_cpu


def recording_ip(q, b):
    BLAS_THREADS.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    return ORIGINAL_IP(q, b)


def test_tasks_are_single_threaded(monkeypatch):
    """A cluster of T threads runs T single-threaded tasks: BLAS inside tasks uses one
    thread (a multi-threaded BLAS in every task would run T² threads)."""
    monkeypatch.setattr(scan, "ip_cpu", recording_ip)
    BLAS_THREADS.clear()
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                     silence_logs=logging.CRITICAL) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        build(1500, client=client)
    assert BLAS_THREADS and set(BLAS_THREADS) == {1}


def test_plan_shards_fits_the_budget():
    rng = np.random.default_rng(0)
    sizes = rng.integers(10, 50, 30)
    table = np.stack([np.roll(np.arange(30), -i)[:4] for i in range(30)])
    order = np.arange(30)
    assert plan_shards(order, table, sizes, 10, 10**9) == [list(range(30))]
    plan = plan_shards(order, table, sizes, 10, 2000)
    assert sorted(sum(plan, [])) == list(range(30)) and len(plan) > 1
    for group in plan:
        held = set(table[group].ravel().tolist())
        assert sizes[list(held)].sum() * 10 <= 2000 or len(group) == 1


def test_plan_items_cover_every_row_once():
    sizes = np.array([5, 0, 40, 3])
    chunks = plan_items([0, 1, 2, 3], sizes, 4)
    rows = [(lst, r) for chunk in chunks for lst, a, b in chunk for r in range(a, b)]
    assert sorted(rows) == [(lst, r) for lst in range(4) for r in range(sizes[lst])]
    assert 3 <= len(chunks) <= 6
    small = plan_items([0, 1, 2, 3], sizes, 4, max_rows=7)  # memory caps a task's queries
    assert all(sum(b - a for _, a, b in chunk) <= 7 for chunk in small) and len(small) >= 7
    again = [(lst, r) for chunk in small for lst, a, b in chunk for r in range(a, b)]
    assert sorted(again) == sorted(rows)


def test_part_rows_groups_by_partition():
    offsets = np.array([0, 4, 4, 10, 12])
    got = part_rows(offsets, np.array([0, 4, 5, 11]))
    assert {p: v.tolist() for p, v in got.items()} == {0: [0], 2: [0, 1], 3: [1]}


def test_empty_partitions_anywhere_are_fine(plain):
    """0-row partitions (e.g. an empty parquet/npz pair) after the first one."""

    class Gappy(ArrayBlocks):
        def __post_init__(self):
            super().__post_init__()
            self.bounds = [0, 2000, 2000, 4500, 4500, 4500, N]
            self.sizes = list(np.diff(self.bounds))

        def load(self, i):
            return self.array[self.bounds[i] : self.bounds[i + 1]]

    for index in ("ivf", "exact"):
        graph, _ = build_knn_graph(Gappy(X), n_neighbors=8, index=index)
        np.testing.assert_array_equal(graph.neighbors, plain[index][0].neighbors)
