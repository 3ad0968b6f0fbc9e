"""Exact search through a PCA space (d2scale.graph.small) gives the exact index's graph bit
for bit: near-ties, duplicates and low-rank lattices included."""

import numpy as np
import pytest

from d2scale.graph import build_knn_graph, scan, shards, small
from d2scale.types import ArrayBlocks


def reference_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64, by blocks of rows: k nearest other rows by (distance, id)."""
    x64 = x.astype(np.float64)
    nbr, dist = np.empty((len(x), k), np.int64), np.empty((len(x), k), np.float32)
    for a in range(0, len(x), 100):
        d2 = ((x64[a : a + 100, None, :] - x64[None, :, :]) ** 2).sum(-1)
        d2[np.arange(d2.shape[0]), np.arange(a, a + d2.shape[0])] = np.inf
        order = np.lexsort((np.broadcast_to(np.arange(len(x)), d2.shape), d2), axis=1)[:, :k]
        nbr[a : a + 100] = order
        dist[a : a + 100] = np.sqrt(np.take_along_axis(d2, order, axis=1))
    return nbr, dist


def clustered(n: int, dim: int = 64, latent: int = 8, seed: int = 0) -> np.ndarray:
    """Low-rank clusters plus a little isotropic noise (PCA keeps 90% in a few dims)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 100, latent))
    z = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, latent))
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0]
    x = z @ basis.T + 0.05 * rng.standard_normal((n, dim))
    x[10:40] = x[3]  # a duplicate group larger than k + margin
    x[50] = x[51] + 1e-6  # a near-duplicate
    return x.astype(np.float32)


def lattice(n: int, dim: int = 48, seed: int = 1) -> np.ndarray:
    """Integer points of a 5-d grid embedded in ``dim`` dimensions: distances tie, up to
    float32 rounding, everywhere."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, 5)))[0]
    return (rng.integers(0, 8, (n, 5)) @ basis.T).astype(np.float32)


def plain_exact(monkeypatch, x, k):
    """The exact index searching its shard as it is (no PCA space)."""
    with monkeypatch.context() as m:
        m.setattr(small, "fit_basis", no_basis)
        return build_knn_graph(ArrayBlocks(x, 1500), n_neighbors=k, index="exact")


def no_basis(shard, seed):  # module level: Dask finds it by name
    return None


@pytest.mark.parametrize("make", [clustered, lattice])
def test_pca_space_gives_the_exact_graph(make, monkeypatch):
    x = make(5000)
    got, info = build_knn_graph(ArrayBlocks(x, 1500), n_neighbors=8, index="exact")
    assert info["exact_search_dim"] is not None and info["exact_search_dim"] <= x.shape[1] // 2
    ref, ref_info = plain_exact(monkeypatch, x, 8)
    assert ref_info["exact_search_dim"] is None
    np.testing.assert_array_equal(got.neighbors, ref.neighbors)
    np.testing.assert_array_equal(got.distances, ref.distances)


@pytest.mark.slow
def test_pca_space_matches_brute_force():
    x = clustered(4200, dim=40, seed=5)
    got, info = build_knn_graph(ArrayBlocks(x, 4200), n_neighbors=6, index="exact")
    assert info["exact_search_dim"] is not None
    ref_nbr, ref_dist = reference_knn(x, 6)
    np.testing.assert_array_equal(got.neighbors, ref_nbr)
    np.testing.assert_array_max_ulp(got.distances, ref_dist, maxulp=1)


@pytest.mark.parametrize("cost", [small.CANDIDATE_COST, 10**9])  # 10**9: brute force
def test_search_chunk_equals_topk_on_a_shard(cost, monkeypatch):
    monkeypatch.setattr(small, "CANDIDATE_COST", cost)
    x = clustered(4200, seed=2)
    ids = np.arange(x.shape[0])
    shard = shards.build_shard([(ids, x, np.zeros(ids.size, np.int32))], 1)
    space = small.fit_space(shard, seed=0)
    assert space is not None and space.dim < 32
    items = [(0, 0, 700), (0, 3000, 4200)]
    q, nbr, d2 = small.search_chunk(shard, space, items, np.zeros((1, 1), np.int32), 9)
    want = np.r_[0:700, 3000:4200]
    pos, ref_d2 = scan.topk(x[want], None, [(0, 4200)], 9, ids, aug=shard.aug)
    np.testing.assert_array_equal(q, want)
    np.testing.assert_array_equal(nbr, pos)
    np.testing.assert_array_equal(d2, ref_d2)


def test_no_space_for_small_or_full_rank_shards():
    rng = np.random.default_rng(0)
    for x in (clustered(1000), rng.standard_normal((5000, 64)).astype(np.float32)):
        ids = np.arange(x.shape[0])
        shard = shards.build_shard([(ids, x, np.zeros(ids.size, np.int32))], 1)
        assert small.fit_basis(shard, seed=0) is None and small.fit_space(shard, 0) is None
