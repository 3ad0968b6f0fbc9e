"""Per-row probing: every row's exact top candidates among the lists nearest to itself."""

import numpy as np
import pytest

from d2scale.graph import build_knn_graph, ivf, probed, shards
from d2scale.types import ArrayBlocks


def rows_with_ties(n: int = 1500, dim: int = 24, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[100:140] = x[7]  # a group of exact duplicates larger than the candidates kept
    x[200:260:3] = x[201]
    return x


def make_shard(x: np.ndarray, nlist: int, projection=None):
    centroids = ivf.train_centroids(x if projection is None else projection(x), nlist, 0)
    y = x if projection is None else projection(x)
    near = ivf.nearest_lists(y, centroids, nlist).astype(np.int64)
    lists = near[:, 0]
    ids = np.arange(x.shape[0])
    shard = shards.build_shard([(ids, y, lists)], nlist)
    return shard, near, lists


def brute_force(x, shard, q, probes, keep):
    """Exact top-``keep`` of shard row q among its probed lists by (float64 distance, id)."""
    rows = np.concatenate([np.arange(*shard.span(int(p))) for p in probes])
    xs = shard.search_rows(slice(None)).astype(np.float64)
    d = ((xs[rows] - xs[q]) ** 2).sum(axis=1)
    order = np.lexsort((shard.ids[rows], d))[:keep]
    return rows[order], d[order]


@pytest.mark.parametrize("nprobe", [1, 3, 8])
def test_topk_probed_is_the_exact_top_of_the_probed_rows(nprobe):
    x = rows_with_ties()
    shard, near, _ = make_shard(x, 16)
    q = np.arange(0, x.shape[0], 7)
    probes = near[shard.ids[q], :nprobe]
    pos, d2 = probed.topk_probed(shard, q, probes, keep=9)
    for t, row in enumerate(q):
        want_pos, want_d = brute_force(x, shard, row, probes[t], 9)
        np.testing.assert_array_equal(pos[t, : want_pos.size], want_pos)
        np.testing.assert_allclose(d2[t, : want_d.size], want_d, rtol=1e-12, atol=0)


def test_results_do_not_depend_on_how_queries_are_grouped():
    x = rows_with_ties(seed=4)
    shard, near, lists = make_shard(x, 12)
    sizes = np.bincount(lists, minlength=12)
    whole = probed.search_rows(shard, shards.plan_items(list(range(12)), sizes, 1)[0], near[:, :4],
                               m=6)  # fmt: skip
    parts = [probed.search_rows(shard, items, near[:, :4], m=6)
             for items in shards.plan_items(list(range(12)), sizes, 7)]  # fmt: skip
    ids = np.concatenate([p[0] for p in parts])
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], np.sort(whole[0]))
    back = np.argsort(whole[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts])[order], whole[1][back])
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts])[order], whole[2][back])


def test_exact_duplicates_are_found_at_distance_zero_in_id_order():
    x = rows_with_ties()
    shard, near, _ = make_shard(x, 16)
    at = np.flatnonzero(shard.ids == 120)
    pos, d2 = probed.topk_probed(shard, at, near[[120], :2], keep=5)
    assert (d2[0] == 0).all()
    np.testing.assert_array_equal(shard.ids[pos[0]], [7, 100, 101, 102, 103])


def test_union_table_holds_every_list_probed_by_a_row_of_each_list():
    rng = np.random.default_rng(0)
    lists = rng.integers(0, 10, 400)
    probes = np.concatenate([lists[:, None], rng.integers(0, 10, (400, 3))], axis=1)
    table = probed.union_table(lists, probes, 10)
    for a in range(10):
        want = set(probes[lists == a].ravel().tolist())
        got = table[a][table[a] >= 0]
        assert set(got.tolist()) == want and got.size == len(want)


def test_broad_clusters_are_tuned_with_per_row_probes_and_reach_the_recall():
    """Rows near their list's border need many probes when probing follows the list's
    centroid; per-row probing is cheaper there and the tuner picks it."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6000, 32)).astype(np.float32)  # one broad blob
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    graph, info = build_knn_graph(ArrayBlocks(x, 1500), n_neighbors=10, index="ivf",
                                  recall=0.9, pca=False)  # fmt: skip
    assert info["probing"] == "row" and info["recall_reached"]
    truth, _ = build_knn_graph(ArrayBlocks(x, 6000), n_neighbors=10, index="exact")
    measured = ivf.recall_at_k(graph.neighbors, truth.neighbors)[0]
    assert measured >= 0.89 and abs(measured - info["recall"]) < 4 * info["recall_se"] + 0.01


@pytest.mark.parametrize("limit", [None, 2_000_000])
def test_probes_ranked_after_tuning_equal_those_of_the_assignment(monkeypatch, limit):
    """The assignment ranks PROBE_FIRST lists per row; a tuned nprobe beyond that is ranked
    by a pass over the kept (or, at a tight limit, spilled) rows: the graph is the same."""
    rng = np.random.default_rng(2)
    z = rng.standard_normal((4000, 6)) @ rng.standard_normal((6, 48))  # PCA applies
    x = (z + 0.3 * rng.standard_normal((4000, 48))).astype(np.float32)
    kw = {"n_neighbors": 6, "index": "ivf", "nlist": 64, "nprobe": 12, "memory_limit": limit}
    monkeypatch.setattr(ivf, "PROBE_FIRST", 8)
    later, info = build_knn_graph(ArrayBlocks(x, 1000), **kw)
    assert info["probing"] == "row" and info["nprobe"] == 12
    assert info["search_rows_from"] == ("kept" if limit is None else "disk")
    monkeypatch.setattr(ivf, "PROBE_FIRST", 48)
    first, _ = build_knn_graph(ArrayBlocks(x, 1000), **kw)
    np.testing.assert_array_equal(later.neighbors, first.neighbors)
    np.testing.assert_array_equal(later.distances, first.distances)


def test_a_resumed_build_ranks_the_extra_probes_again(monkeypatch, tmp_path):
    """Restored assignment parts keep no rows: probes beyond PROBE_FIRST come from the
    pool then, and the resumed graph equals the first."""
    rng = np.random.default_rng(2)
    z = rng.standard_normal((3000, 6)) @ rng.standard_normal((6, 48))
    x = (z + 0.3 * rng.standard_normal((3000, 48))).astype(np.float32)
    kw = {"n_neighbors": 6, "index": "ivf", "nlist": 48, "nprobe": 12, "workdir": str(tmp_path)}
    monkeypatch.setattr(ivf, "PROBE_FIRST", 8)
    first, info = build_knn_graph(ArrayBlocks(x, 1000), **kw)
    assert info["probing"] == "row"
    for part in (tmp_path / "parts").glob("chunk-*"):
        part.unlink()  # the search runs again, over restored assignments
    again, _ = build_knn_graph(ArrayBlocks(x, 1000), **kw)
    np.testing.assert_array_equal(again.neighbors, first.neighbors)
    np.testing.assert_array_equal(again.distances, first.distances)
