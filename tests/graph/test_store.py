"""Graph directories: layout, loading errors, resume after a failure, refusal of other inputs."""

import json
import os

import numpy as np
import pytest

from d2scale.errors import D2ScaleError
from d2scale.graph import build_knn_graph, load_graph, load_lists, save_graph, shards
from d2scale.types import ArrayBlocks, KnnGraph


def clip_like(n: int, dim: int = 48, seed: int = 0, latent: int = 12) -> np.ndarray:
    """CLIP-like unit vectors (as d2scale.synth): latent clusters, a shared mean, noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 150), latent))
    z = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, latent))
    proj = np.linalg.qr(rng.standard_normal((dim, latent)))[0]
    x = 0.5 + z @ proj.T / np.sqrt(latent) + 0.35 / np.sqrt(dim) * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


X = clip_like(5000, seed=9)
BLOCK = 500  # 10 partitions

# Task wrappers, referenced by module name so that Dask workers in this process find them.
ORIGINAL_SEARCH, ORIGINAL_MERGE = shards.search_part, shards.merge_part
SEARCHED: list[tuple[int, str | None]] = []
FAIL_AT = {"offset": -1}


def counting_search(lists, blocks, part, assigned, probes, m, kernels, path=None):
    SEARCHED.append((part, path and os.path.basename(path)))
    return ORIGINAL_SEARCH(lists, blocks, part, assigned, probes, m, kernels, path)


def failing_merge(results, m, k, offset, path=None):
    if offset == FAIL_AT["offset"]:
        raise RuntimeError("injected failure")
    return ORIGINAL_MERGE(results, m, k, offset, path)


def failing_search(lists, blocks, part, assigned, probes, m, kernels, path=None):
    if path is not None and path.endswith(f"part-{FAIL_AT['offset'] // BLOCK:05d}.shard-001.npz"):
        raise RuntimeError("injected failure")
    return counting_search(lists, blocks, part, assigned, probes, m, kernels, path)


def build(workdir=None, **kw):
    kw = {"n_neighbors": 6, "index": "ivf", **kw}
    return build_knn_graph(ArrayBlocks(X, BLOCK), workdir=workdir, **kw)


@pytest.fixture(scope="module")
def uninterrupted():
    return {s: build(memory_limit=None if s == 1 else 5000 * (48 * 6 + 8) // s + 1) for s in (1, 2)}


def test_layout_and_round_trip(tmp_path, uninterrupted):
    gdir = str(tmp_path / "g")
    graph, info = build(gdir)
    assert sorted(os.listdir(gdir)) == sorted(
        [
            "manifest.json",
            "model.npz",
            "parts",
            "neighbors.npy",
            "distances.npy",
            "lists.npy",
            "meta.json",
        ]  # fmt: skip
    )
    assert sorted(os.listdir(os.path.join(gdir, "parts"))) == sorted(
        [f"part-{p:05d}.npz" for p in range(10)] + [f"lists-{p:05d}.npy" for p in range(10)]
    )
    loaded, meta = load_graph(gdir)
    np.testing.assert_array_equal(loaded.neighbors, graph.neighbors)
    np.testing.assert_array_equal(loaded.distances, graph.distances)
    np.testing.assert_array_equal(graph.neighbors, uninterrupted[1][0].neighbors)
    assert meta["n"] == 5000 and meta["k"] == 6 and meta["index"] == "ivf"
    for key in ("nlist", "nprobe", "recall", "recall_method", "timings", "fingerprint", "dim"):
        assert key in meta
    lists = load_lists(gdir)
    assert lists.dtype == np.int32 and lists.shape == (5000,) and lists.max() < meta["nlist"]
    with open(os.path.join(gdir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["parts_done"] == list(range(10)) and manifest["params"]["n_neighbors"] == 6


def test_resume_recomputes_only_missing_partitions(tmp_path, monkeypatch, uninterrupted):
    gdir = str(tmp_path / "g")
    FAIL_AT["offset"] = 3 * BLOCK
    monkeypatch.setattr(shards, "merge_part", failing_merge)
    with pytest.raises(RuntimeError, match="injected failure"):
        build(gdir)
    monkeypatch.setattr(shards, "merge_part", ORIGINAL_MERGE)
    parts = os.path.join(gdir, "parts")
    done = {p for p in range(10) if os.path.exists(os.path.join(parts, f"part-{p:05d}.npz"))}
    assert done and 3 not in done and os.path.exists(os.path.join(gdir, "model.npz"))
    SEARCHED.clear()
    monkeypatch.setattr(shards, "search_part", counting_search)
    graph, info = build(gdir)
    assert sorted(p for p, _ in SEARCHED) == sorted(set(range(10)) - done)
    assert "train" not in info["timings"] and "tune" not in info["timings"]  # model reused
    ref_graph, ref_info = uninterrupted[1]
    np.testing.assert_array_equal(graph.neighbors, ref_graph.neighbors)
    np.testing.assert_array_equal(graph.distances, ref_graph.distances)
    assert info["nprobe"] == ref_info["nprobe"] and info["recall"] == ref_info["recall"]


def test_resume_with_shards_recomputes_only_missing_shard_parts(
    tmp_path, monkeypatch, uninterrupted
):
    gdir = str(tmp_path / "g")
    limit = 5000 * (48 * 6 + 8) // 2 + 1  # two shards
    FAIL_AT["offset"] = 6 * BLOCK
    monkeypatch.setattr(shards, "search_part", failing_search)
    with pytest.raises(RuntimeError, match="injected failure"):
        build(gdir, memory_limit=limit)
    parts = set(os.listdir(os.path.join(gdir, "parts")))
    shard1_done = {p for p in range(10) if f"part-{p:05d}.shard-001.npz" in parts}
    assert all(f"part-{p:05d}.shard-000.npz" in parts for p in range(10)) and 6 not in shard1_done
    SEARCHED.clear()
    monkeypatch.setattr(shards, "search_part", counting_search)
    graph, _ = build(gdir, memory_limit=10**9)  # a resumed run keeps its shard plan
    final_done = {p for p in range(10) if f"part-{p:05d}.npz" in parts}
    expected = {
        (p, f"part-{p:05d}.shard-001.npz") for p in set(range(10)) - shard1_done - final_done
    }
    assert set(SEARCHED) == expected
    np.testing.assert_array_equal(graph.neighbors, uninterrupted[2][0].neighbors)
    np.testing.assert_array_equal(graph.neighbors, uninterrupted[1][0].neighbors)


def test_other_input_or_parameters_are_refused(tmp_path):
    gdir = str(tmp_path / "g")
    small = ArrayBlocks(X[:1200], 400)
    build_knn_graph(small, n_neighbors=4, index="exact", workdir=gdir)
    other = ArrayBlocks(X[1200:2400], 400)
    with pytest.raises(D2ScaleError, match="different input"):
        build_knn_graph(other, n_neighbors=4, index="exact", workdir=gdir)
    with pytest.raises(D2ScaleError, match=r"other parameters \(n_neighbors: 4 then, 5 now\)"):
        build_knn_graph(small, n_neighbors=5, index="exact", workdir=gdir)
    again, _ = build_knn_graph(small, n_neighbors=4, index="exact", workdir=gdir)  # all done
    np.testing.assert_array_equal(again.neighbors, load_graph(gdir)[0].neighbors)


def test_a_source_fingerprint_is_used_as_is(tmp_path):
    class Tagged(ArrayBlocks):
        fingerprint = "pool-1234"

    _, info = build_knn_graph(Tagged(X[:600]), n_neighbors=3, workdir=str(tmp_path / "g"))
    assert info["fingerprint"] == "pool-1234" == load_graph(str(tmp_path / "g"))[1]["fingerprint"]


def test_save_load_and_errors(tmp_path):
    gdir = str(tmp_path / "g")
    graph = KnnGraph(
        np.array([[1, -1], [0, -1]]), np.array([[0.5, np.inf], [0.5, np.inf]], np.float32)
    )
    save_graph(gdir, graph, {"index": "exact"})
    loaded, meta = load_graph(gdir)
    np.testing.assert_array_equal(loaded.neighbors, graph.neighbors)
    assert meta == {"index": "exact", "n": 2, "k": 2} and load_lists(gdir) is None
    assert not [f for f in os.listdir(gdir) if f.startswith(".tmp")]

    with pytest.raises(D2ScaleError, match="not a graph directory"):
        load_graph(str(tmp_path / "nowhere"))
    np.save(os.path.join(gdir, "neighbors.npy"), np.array([[1, 5], [0, -1]]))
    with pytest.raises(D2ScaleError, match=r"ids outside \[-1, 2\)"):
        load_graph(gdir)
    np.save(os.path.join(gdir, "distances.npy"), np.zeros((2, 3), np.float32))
    with pytest.raises(D2ScaleError, match=r"distances.npy must hold floats of shape \(2, 2\)"):
        load_graph(gdir)
    with open(os.path.join(gdir, "distances.npy"), "wb") as f:
        f.write(b"\x93NUMPY garbage")
    with pytest.raises(D2ScaleError, match="corrupt graph file .*distances.npy"):
        load_graph(gdir)
    os.remove(os.path.join(gdir, "neighbors.npy"))
    with pytest.raises(D2ScaleError, match="not a graph directory .no neighbors.npy"):
        load_graph(gdir)
