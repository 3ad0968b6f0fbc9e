"""Bounded memory: shards hold only search-space rows and a separate pass re-ranks the
candidates by streaming the pool; the graph is the one of an unlimited build."""

import numpy as np
import pytest

from d2scale.graph import build_knn_graph, rerank, shards
from d2scale.pool.sources import PoolEmbeddings, feature_keys, open_pool
from d2scale.pool.synth import write_pool
from d2scale.types import ArrayBlocks, SubsetBlocks


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pool"))
    write_pool(path, rows=5000, shards=3, seed=5, layout="mixed")
    return PoolEmbeddings(open_pool(path), feature_keys("l14", "image_text"))


@pytest.mark.parametrize("rows", [1, 700, 10**6])
def test_iter_rows_gives_the_rows_of_iter_chunks(pool, rows):
    rng = np.random.default_rng(0)
    for i in range(3):
        whole = pool.load(i)
        local = np.sort(rng.choice(pool.sizes[i], 300, replace=False))
        got = np.empty((local.size, pool.dim), np.float32)
        spans = []
        for a, b, x in pool.iter_rows(i, local, rows):
            got[a:b] = x
            spans.append((a, b))
        assert spans[0][0] == 0 and spans[-1][1] == local.size
        assert all(s[1] == t[0] for s, t in zip(spans, spans[1:], strict=False))
        np.testing.assert_array_equal(got, whole[local])  # bit for bit


def test_subset_blocks_stream_their_rows(pool):
    rows = np.sort(np.random.default_rng(1).choice(sum(pool.sizes), 900, replace=False))
    sub = SubsetBlocks(pool, rows)
    for i in range(3):
        chunks = list(sub.iter_chunks(i, 128))
        got = np.concatenate([x for _, x in chunks]) if chunks else np.empty((0, pool.dim))
        np.testing.assert_array_equal(got, sub.load(i))


def test_a_tiny_memory_limit_does_not_change_the_graph(pool):
    """3 MB: shards of search-space rows only (read from disk), several re-ranking blocks."""
    free, free_info = build_knn_graph(pool, n_neighbors=6, index="ivf")
    tight, info = build_knn_graph(pool, n_neighbors=6, index="ivf", memory_limit=3_000_000)
    assert free_info["shards"] == 1 and free_info["rerank_blocks"] >= 2
    assert info["pca_dim"] is not None and info["shards"] > 1 and info["rerank_blocks"] >= 4
    assert free_info["search_rows_from"] == "kept" and info["search_rows_from"] == "disk"
    np.testing.assert_array_equal(tight.neighbors, free.neighbors)
    np.testing.assert_array_equal(tight.distances, free.distances)


def test_shards_that_gather_the_pool_many_times_over_are_said(pool):
    """Each shard holds its lists' rows and every list they probe: when that adds up to many
    times the pool, the build says so and names the limit that holds one shard."""
    said: list[str] = []
    _, info = build_knn_graph(pool, n_neighbors=6, index="ivf", memory_limit=3_000_000,
                              progress=said.append)  # fmt: skip
    unique = info["unique_rows"]
    assert info["shards"] > 1 and info["gathered_rows"] >= unique
    warned = [m for m in said if "the shards gather" in m]
    assert bool(warned) == (info["gathered_rows"] > 4 * unique), (info["gathered_rows"], said)
    if warned:
        assert "GiB holds it in one shard" in warned[0]
    _, free = build_knn_graph(pool, n_neighbors=6, index="ivf", progress=said.append)
    assert free["shards"] == 1 and free["gathered_rows"] == free["unique_rows"]


def test_resumed_split_build_equals_a_fresh_one(tmp_path):
    """Candidates, re-ranked blocks and spilled search-space rows are saved; a damaged or
    missing one is recomputed; the spill is deleted once the graph is written."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((2000, 6)) @ rng.standard_normal((6, 48))  # PCA applies
    x = (z + 0.1 * rng.standard_normal((2000, 48))).astype(np.float32)
    kw = {"n_neighbors": 5, "index": "ivf", "memory_limit": 600_000}
    first, info = build_knn_graph(ArrayBlocks(x, 500), workdir=str(tmp_path), **kw)
    assert info["rerank_blocks"] > 1 and info["search_rows_from"] == "disk"
    assert not list((tmp_path / "parts").glob("searchspace-*"))
    (tmp_path / "meta.json").unlink()  # as if killed after the re-ranking
    (tmp_path / "parts" / "rerank-00001.npz").write_bytes(b"damaged")
    (tmp_path / "parts" / "chunk-00000.npz").unlink()  # needs a shard: the spill is gone
    again, _ = build_knn_graph(ArrayBlocks(x, 500), workdir=str(tmp_path), **kw)
    np.testing.assert_array_equal(again.neighbors, first.neighbors)
    np.testing.assert_array_equal(again.distances, first.distances)


def test_plan_blocks_fit_the_budget():
    blocks = rerank.plan_blocks(1000, 100, 10_000, 2)
    assert blocks[0] == (0, 50) and blocks[-1][1] == 1000
    assert all(b - a <= 50 for a, b in blocks)
    assert rerank.plan_blocks(10, 1, 10**9, 2) == [(0, 5), (5, 10)]
    assert rerank.plan_blocks(0, 1, 10, 2) == []


def test_streamed_rerank_is_the_exact_order_of_the_candidates():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 33)).astype(np.float32)
    x[150] = x[3]  # an exact tie: the lower id first
    q = np.sort(rng.choice(200, 20, replace=False))
    cand = rng.integers(-1, 200, (20, 9))
    blocks = ArrayBlocks(x, 70)
    offsets = np.array([0, 70, 140, 200])
    got_q, got_ids, got_d2 = shards.rerank_streamed(blocks, offsets, q, cand, 4)
    d2 = ((x[q][:, None, :].astype(np.float64) - x[np.maximum(cand, 0)]) ** 2).sum(-1)
    ref_ids, ref_d2 = rerank.rank(cand, d2, 4)
    np.testing.assert_array_equal(got_q, q)
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_allclose(got_d2, ref_d2, rtol=1e-12)
