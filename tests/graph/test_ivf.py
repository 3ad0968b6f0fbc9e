"""IVF graphs: measured recall reaches the target on CLIP-like data; certified lists and scans."""

import numpy as np
import pytest

from d2scale.errors import D2ScaleError
from d2scale.graph import build_knn_graph, ivf, scan
from d2scale.types import ArrayBlocks


def clip_like(n: int, dim: int = 128, seed: int = 0, latent: int = 16) -> np.ndarray:
    """CLIP-like unit vectors (as d2scale.pool.synth): latent clusters, a shared mean, noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 150), latent))
    z = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, latent))
    proj = np.linalg.qr(rng.standard_normal((dim, latent)))[0]
    mean = rng.standard_normal(dim)
    x = 0.8 * mean / np.linalg.norm(mean) + z @ proj.T / np.sqrt(latent)
    x += 0.35 / np.sqrt(dim) * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def true_knn(x: np.ndarray, k: int) -> np.ndarray:
    graph, _ = build_knn_graph(ArrayBlocks(x, 4096), n_neighbors=k, index="exact")
    return graph.neighbors


def overall_recall(found: np.ndarray, truth: np.ndarray) -> float:
    return ivf.recall_at_k(found, truth)[0]


@pytest.fixture(scope="module")
def pool():
    x = clip_like(12000, seed=5)
    return x, true_knn(x, 10)


@pytest.mark.parametrize("pca", [True, False])
def test_ivf_reaches_recall_target_and_reports_it(pool, pca):
    x, truth = pool
    graph, info = build_knn_graph(
        ArrayBlocks(x, 2500), n_neighbors=10, index="ivf", recall=0.95, pca=pca
    )
    assert info["index"] == "ivf" and info["recall_reached"]
    assert info["recall"] - info["recall_se"] >= 0.95
    assert info["nlist"] == ivf.choose_nlist(12000) and 1 <= info["nprobe"] < info["nlist"]
    assert info["recall_curve"] and "exact neighbours" in info["recall_method"]
    assert (info["pca_dim"] is None) == (not pca)
    r = overall_recall(graph.neighbors, truth)
    assert r >= 0.94, r  # the estimate is from held-out rows: allow its spread
    assert abs(r - info["recall"]) < 4 * info["recall_se"] + 0.01
    # every listed distance is the exact Euclidean distance of that pair
    x64 = x.astype(np.float64)
    exact = np.linalg.norm(x64[:, None, :] - x64[graph.neighbors], axis=-1)
    np.testing.assert_allclose(graph.distances, exact, rtol=1e-6)
    assert (graph.neighbors != np.arange(len(x))[:, None]).all()


def test_predicted_recall_is_the_measured_recall_on_the_evaluation_rows(pool):
    """The tuning predicts what the search finds from lists alone: on rows without ties the
    prediction for the chosen setting is what the built graph has for the same rows."""
    x, truth = pool
    graph, info = build_knn_graph(ArrayBlocks(x, 3000), n_neighbors=10, index="ivf", pca=False)
    perm = np.random.default_rng(0).permutation(len(x))  # the build's seeded held-out rows
    n_train = min(len(x), 32 * info["nlist"])
    eval_ids = np.sort(perm[n_train:][: info["n_eval"]])
    got = overall_recall(graph.neighbors[eval_ids], truth[eval_ids])
    assert got == pytest.approx(info["recall"], abs=1e-9)


def test_fixed_nprobe_is_used_and_measured(pool):
    x, truth = pool
    g1, info1 = build_knn_graph(ArrayBlocks(x, 4000), n_neighbors=10, index="ivf", nprobe=1)
    g8, info8 = build_knn_graph(ArrayBlocks(x, 4000), n_neighbors=10, index="ivf", nprobe=8)
    assert info1["nprobe"] == 1 and info8["nprobe"] == 8
    assert info1["recall"] < info8["recall"]
    assert overall_recall(g1.neighbors, truth) < overall_recall(g8.neighbors, truth)


def test_auto_picks_exact_for_small_pools():
    x = clip_like(500, dim=32)
    _, info = build_knn_graph(ArrayBlocks(x), n_neighbors=5)
    assert info["index"] == "exact"


def test_missed_target_is_reported_honestly():
    x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)
    said: list[str] = []
    _, info = build_knn_graph(ArrayBlocks(x), n_neighbors=10, index="ivf", nprobe=1,
                              progress=said.append)  # fmt: skip
    assert not info["recall_reached"] and info["recall"] < 0.95
    warnings = [m for m in said if "warning" in m]  # a degraded graph is said, not only recorded
    assert (
        len(warnings) == 1
        and "above the target 0.95 at the setting searched (nprobe 1)" in warnings[0]
    ), said


def test_probe_table_is_exact_sorted_centroid_order_list_first():
    rng = np.random.default_rng(2)
    cents = rng.standard_normal((40, 12)).astype(np.float32)
    cents[9] = cents[5]  # a tie between two lists: lower id first, but a list probes itself first
    table = ivf.probe_table(cents, 7)
    d2 = ((cents[:, None].astype(np.float64) - cents[None].astype(np.float64)) ** 2).sum(-1)
    ref = np.lexsort((np.broadcast_to(np.arange(40), d2.shape), d2), axis=1)[:, :7]
    ref[9, :2] = [9, 5]
    np.testing.assert_array_equal(table, ref)


def test_nearest_lists_are_ranked_a_bounded_block_at_a_time(monkeypatch):
    rng = np.random.default_rng(4)
    cents = rng.standard_normal((64, 12)).astype(np.float32)
    cents[9] = cents[5]  # tied lists: the lower id first
    x = np.concatenate([rng.standard_normal((500, 12)).astype(np.float32), cents[[5, 9]]])
    whole = ivf.nearest_lists(x, cents, 10)
    monkeypatch.setattr(ivf, "NEAREST_BYTES", 4 * 64 * 7)  # 7 rows at a time
    np.testing.assert_array_equal(ivf.nearest_lists(x, cents, 10), whole)
    d2 = ((x[:, None].astype(np.float64) - cents[None].astype(np.float64)) ** 2).sum(-1)
    ref = np.lexsort((np.broadcast_to(np.arange(64), d2.shape), d2), axis=1)[:, :10]
    np.testing.assert_array_equal(whole, ref)


@pytest.mark.parametrize("margin", [0, 4])
def test_topk_is_exact_and_independent_of_blocking(margin):
    """Certified sgemm top-k: the exact (distance, id) order over the given spans, whatever
    the query batch or span split, near-duplicates and ties included."""
    x = clip_like(3000, dim=48, seed=3)
    x[10:40] = x[3]  # exact duplicates beyond the candidate margin
    x[50] = x[51] + 1e-7  # a near-duplicate pair
    d2 = ((x[:300, None].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    ref = np.lexsort((np.broadcast_to(np.arange(3000), d2.shape), d2), axis=1)[:, :11]
    pos, dist = scan.topk(x[:300], x, [(0, 1200), (1200, 3000)], 11, margin=margin)
    np.testing.assert_array_equal(pos, ref)
    np.testing.assert_allclose(dist, np.take_along_axis(d2, ref, axis=1), rtol=1e-12, atol=0)
    again = np.concatenate([scan.topk(x[a:b], x, [(0, 3000)], 11)[0] for a, b in
                            [(0, 7), (7, 250), (250, 300)]])  # fmt: skip
    np.testing.assert_array_equal(again, pos)


def test_pca_projection_is_deterministic_and_orthonormal():
    x = clip_like(2000, dim=64)
    proj = ivf.fit_pca(x, 0.9)
    assert proj is not None and proj.dim % 16 == 0 and proj.dim <= 32
    np.testing.assert_allclose(proj.components.T @ proj.components, np.eye(proj.dim), atol=1e-5)
    whole, parts = proj(x), np.concatenate([proj(x[:7]), proj(x[7:1000]), proj(x[1000:])])
    np.testing.assert_array_equal(whole, parts)  # no dependence on batching


def test_choose_nlist_bounds():
    assert ivf.choose_nlist(1_000_000) == 2048
    assert ivf.choose_nlist(200_000) == 512
    assert ivf.choose_nlist(1000) == 1000 // 39
    assert ivf.choose_nlist(10) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not scan.gpu_available(), reason="needs CuPy with a visible GPU")
@pytest.mark.parametrize("index", ["exact", "ivf"])
def test_gpu_kernels_give_the_cpu_graph(pool, index):
    x, _ = pool
    cpu, _ = build_knn_graph(ArrayBlocks(x, 5000), n_neighbors=10, index=index, device="cpu")
    gpu, info = build_knn_graph(ArrayBlocks(x, 5000), n_neighbors=10, index=index, device="cuda")
    assert info["device"] == "cuda"
    np.testing.assert_array_equal(gpu.neighbors, cpu.neighbors)
    np.testing.assert_array_equal(gpu.distances, cpu.distances)


def test_auto_device_keeps_the_graph_on_the_cpu_even_with_a_gpu(monkeypatch):
    from d2scale import backends
    from d2scale.graph import build

    needs = backends._RUNTIMES["cupy"][1]
    monkeypatch.setitem(backends._RUNTIMES, "cupy", (lambda: True, needs))
    assert build._device("auto") == "cpu"  # the CuPy scan measured slower than 16 CPU cores
    assert build._device("cpu") == "cpu"
    assert build._device("cuda") == "cuda"
    monkeypatch.setitem(backends._RUNTIMES, "cupy", (lambda: False, needs))
    with pytest.raises(D2ScaleError, match="needs a CUDA GPU that CuPy"):
        build._device("cuda")


def test_bounded_eval_neighbours_of_chunks_merge_to_the_exact_neighbours(monkeypatch):
    """With the bound from a sample of the pool, each chunk re-ranks only the candidates that
    may be among a row's pool-wide neighbours; merged over the chunks they are the exact
    neighbours of a full search (ties by id included)."""
    x = clip_like(6000, dim=96, seed=5)
    x[4000:4030] = x[17]  # exact duplicates: ties by id
    projection = ivf.fit_pca(x)
    y = projection(x)
    q = np.concatenate([[17], np.arange(3, 6000, 53)])
    q.sort()
    sample = np.random.default_rng(0).choice(6000, 2000, replace=False)
    bound = ivf.neighbour_bound(x[q], x[np.sort(sample)], 11)
    assert np.isfinite(bound).all()
    monkeypatch.setattr(ivf, "BOUND_SAMPLE_ROWS", 300)  # the sample in blocks: the same bound
    np.testing.assert_array_equal(ivf.neighbour_bound(x[q], x[np.sort(sample)], 11), bound)
    parts = []
    for a in range(0, 6000, 1500):
        (pos, d2), _ = ivf.eval_neighbours(x[q], y[q], x[a : a + 1500], y[a : a + 1500],
                                           (11, 44), projection, bound)  # fmt: skip
        parts.append((np.where(pos >= 0, pos + a, -1), d2))
        assert ((pos >= 0).sum(axis=1) <= 11).all()
    ids, d2 = scan.merge(parts, 11)
    want = scan.topk(x[q], x, [(0, 6000)], 11)
    np.testing.assert_array_equal(ids, want[0])
    np.testing.assert_array_equal(d2, want[1])
    assert (d2[:, -1] <= bound).all()


@pytest.mark.parametrize("pca", [True, False])
def test_eval_neighbours_equal_a_full_exact_search(pca):
    """The evaluation rows' exact neighbours, taken from search-space candidates where the
    projection's lower bound certifies them, equal those of a full exact search."""
    x = clip_like(3000, dim=96, seed=2)
    x[500:520] = x[11]  # exact duplicates: ties by id
    projection = ivf.fit_pca(x) if pca else None
    assert (projection is not None) == pca
    y = x if projection is None else projection(x)
    q = np.arange(0, 3000, 37)
    (pos, d2), (c_pos, c_d2) = ivf.eval_neighbours(x[q], y[q], x, y, (11, 44), projection)
    want = scan.topk(x[q], x, [(0, 3000)], 11)
    np.testing.assert_array_equal(pos, want[0])
    np.testing.assert_array_equal(d2, want[1])
    want_c = scan.topk(y[q], y, [(0, 3000)], 44)
    np.testing.assert_array_equal(c_pos, want_c[0])


def test_recall_from_probes_counts_what_the_search_would_keep():
    """A true neighbour counts at (nprobe, m) when it is among the first m candidates that
    lie in the row's first nprobe probed lists: checked against that rule written out."""
    rng = np.random.default_rng(3)
    rows, k, m_max, nlist, n = 60, 5, 20, 16, 400
    lists = rng.integers(0, nlist, n)
    probes = np.stack([rng.permutation(nlist)[:8] for _ in range(rows)])
    cands = np.stack([rng.permutation(n)[:m_max] for _ in range(rows)])
    cands[rng.random(cands.shape) < 0.1] = -1  # repeats removed
    truth = np.where(
        rng.random((rows, k)) < 0.7, cands[:, :k][:, ::-1], rng.integers(0, n, (rows, k))
    )
    truth[:, -1] = np.where(rng.random(rows) < 0.2, -1, truth[:, -1])
    truth[:, 0] = np.where(truth[:, 0] >= 0, truth[:, 0], 0)
    truth[5, 1] = truth[5, 2]  # a representative twice (exact duplicates)
    grid = [(p, m) for p in (1, 2, 3, 5, 8) for m in (3, 7, 20)]
    got = ivf.recall_from_probes(truth, cands, probes, np.arange(rows), lists, nlist, grid)
    for p, m in grid:
        per_row = []
        for t, c, pr in zip(truth, cands, probes, strict=True):
            kept = [x for x in c if x >= 0 and lists[x] in set(pr[:p].tolist())][:m]
            valid = t[t >= 0]
            per_row.append(np.isin(valid, kept).sum() / max(1, valid.size))
        assert got[(p, m)][0] == pytest.approx(np.mean(per_row))
        assert got[(p, m)][1] == pytest.approx(np.std(per_row, ddof=1) / np.sqrt(rows))


def test_first_reps_keeps_each_representative_at_its_first_place():
    from d2scale.graph.build import _first_reps

    rep = np.array([0, 1, 1, 3, 0, 5, 3, 7])
    cands = np.array([[2, 1, 4, 0, -1, 6, 3, 5], [7, 7, -1, -1, 5, 0, 1, 2]])
    want = np.array([[1, -1, 0, -1, -1, 3, -1, 5], [7, -1, -1, -1, 5, 0, 1, -1]])
    np.testing.assert_array_equal(_first_reps(cands, rep), want)
