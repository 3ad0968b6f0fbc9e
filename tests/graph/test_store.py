"""Graph directories: layout, loading errors, resume after a failure, refusal of other inputs."""

import json
import os

import numpy as np
import pytest

from d2scale.errors import D2ScaleError
from d2scale.graph import build_knn_graph, load_graph, load_lists, probed, save_graph, shards
from d2scale.graph.store import GraphStore
from d2scale.types import ArrayBlocks, KnnGraph


def clip_like(n: int, dim: int = 48, seed: int = 0, latent: int = 12) -> np.ndarray:
    """CLIP-like unit vectors (as d2scale.pool.synth): latent clusters, a shared mean, noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 150), latent))
    z = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, latent))
    proj = np.linalg.qr(rng.standard_normal((dim, latent)))[0]
    x = 0.5 + z @ proj.T / np.sqrt(latent) + 0.35 / np.sqrt(dim) * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


X = clip_like(5000, seed=9)
BLOCK = 500  # 10 partitions

# Task wrappers, referenced by module name so that Dask workers in this process find them.
ORIGINAL_SEARCH = {"list": shards.search_lists, "row": probed.search_rows}
SEARCHED: list[int] = []  # first query list of every searched chunk
FAIL_AT = {"list": -1}


def counting_search(shard, items, probes, *args):
    SEARCHED.append(items[0][0])
    by_row = probes.shape[0] == X.shape[0]  # per-row probes (else a per-list table)
    return ORIGINAL_SEARCH["row" if by_row else "list"](shard, items, probes, *args)


def failing_search(shard, items, *args):
    if any(lst == FAIL_AT["list"] for lst, _, _ in items):
        raise RuntimeError("injected failure")
    return counting_search(shard, items, *args)


def build(workdir=None, **kw):
    kw = {"n_neighbors": 6, "index": "ivf", **kw}
    return build_knn_graph(ArrayBlocks(X, BLOCK), workdir=workdir, **kw)


@pytest.fixture(scope="module")
def uninterrupted():
    return build()


def chunks(gdir: str) -> set[str]:
    return {f for f in os.listdir(os.path.join(gdir, "parts")) if f.startswith("chunk-")}


def test_layout_and_round_trip(tmp_path, uninterrupted):
    gdir = str(tmp_path / "g")
    graph, info = build(gdir)
    assert sorted(os.listdir(gdir)) == sorted(
        ["manifest.json", "model.npz", "parts", "neighbors.npy", "distances.npy", "lists.npy",
         "meta.json"]
    )  # fmt: skip
    with open(os.path.join(gdir, "manifest.json")) as f:
        manifest = json.load(f)
    n_chunks = sum(len(c) for c in manifest["plan"]["chunks"])
    n_blocks = len(manifest["plan"].get("rerank_blocks") or [])
    assert sorted(os.listdir(os.path.join(gdir, "parts"))) == sorted(
        [f"assign-{p:05d}.npz" for p in range(10)] + [f"chunk-{c:05d}.npz" for c in range(n_chunks)]
        + [f"rerank-{b:05d}.npz" for b in range(n_blocks)]
    )  # fmt: skip
    loaded, meta = load_graph(gdir)
    np.testing.assert_array_equal(loaded.neighbors, graph.neighbors)
    np.testing.assert_array_equal(loaded.distances, graph.distances)
    np.testing.assert_array_equal(graph.neighbors, uninterrupted[0].neighbors)
    assert meta["n"] == 5000 and meta["k"] == 6 and meta["index"] == "ivf"
    for key in ("nlist", "nprobe", "recall", "recall_method", "timings", "fingerprint", "dim",
                "peak_rss_bytes"):  # fmt: skip
        assert key in meta
    lists = load_lists(gdir)
    assert lists.dtype == np.int32 and lists.shape == (5000,) and lists.max() < meta["nlist"]
    assert manifest["params"]["n_neighbors"] == 6


@pytest.mark.own_cluster  # counts the chunks searched: no stray task of the failed build
def test_resume_recomputes_only_missing_chunks(tmp_path, monkeypatch, uninterrupted):
    gdir = str(tmp_path / "g")
    monkeypatch.setattr(shards, "search_lists", failing_search)
    monkeypatch.setattr(probed, "search_rows", failing_search)
    FAIL_AT["list"] = 3
    with pytest.raises(RuntimeError, match="injected failure"):
        build(gdir, memory_limit=1_500_000)  # several shards: some finish before the failure
    done = chunks(gdir)
    assert os.path.exists(os.path.join(gdir, "model.npz"))
    SEARCHED.clear()
    FAIL_AT["list"] = -1
    graph, info = build(gdir)  # a resumed run keeps its plan (the memory limit is not a param)
    with open(os.path.join(gdir, "manifest.json")) as f:
        n_chunks = sum(len(c) for c in json.load(f)["plan"]["chunks"])
    assert len(SEARCHED) == n_chunks - len(done) > 0
    assert "train" not in info["timings"] and "tune" not in info["timings"]  # model reused
    ref_graph, ref_info = uninterrupted
    np.testing.assert_array_equal(graph.neighbors, ref_graph.neighbors)
    np.testing.assert_array_equal(graph.distances, ref_graph.distances)
    assert info["nprobe"] == ref_info["nprobe"] and info["recall"] == ref_info["recall"]


def test_damaged_parts_are_recomputed_on_resume(tmp_path, uninterrupted):
    gdir = str(tmp_path / "g")
    build(gdir)
    parts = os.path.join(gdir, "parts")
    with open(os.path.join(parts, "chunk-00000.npz"), "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    with open(os.path.join(parts, "assign-00002.npz"), "wb") as f:
        f.write(b"")
    with open(os.path.join(gdir, "model.npz"), "r+b") as f:
        f.truncate(100)
    graph, info = build(gdir)
    np.testing.assert_array_equal(graph.neighbors, uninterrupted[0].neighbors)
    np.testing.assert_array_equal(graph.distances, uninterrupted[0].distances)
    assert "train" in info["timings"]  # the damaged model was trained again


def test_only_the_driver_writes_the_store(tmp_path, monkeypatch):
    """Tasks return results; the graph directory is written by the driver alone (workers
    need no shared filesystem)."""
    import threading

    from d2scale import io

    writers = set()
    for name in ("save_npz", "save_npy", "save_json"):
        original = getattr(io, name)

        def spy(*a, _original=original, **kw):
            writers.add(threading.current_thread().name)
            return _original(*a, **kw)

        for module in ("d2scale.graph.store", "d2scale.graph.shards"):
            if hasattr(__import__(module, fromlist=["x"]), name):
                monkeypatch.setattr(f"{module}.{name}", spy)
    build(str(tmp_path / "g"), memory_limit=1_500_000)
    assert writers == {threading.main_thread().name}


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


def test_a_file_url_is_its_local_directory_and_other_urls_are_refused(tmp_path, monkeypatch):
    """``file://`` graph directories resume and load like their paths (no stray ``file:``
    directory in the working directory); an object-store URL is one sentence."""
    monkeypatch.chdir(tmp_path)
    url = f"file://{tmp_path}/g"
    store = GraphStore(url)
    store.begin("fingerprint", {"k": 1})
    assert GraphStore(url).read_manifest()["fingerprint"] == "fingerprint"
    save_graph(url, KnnGraph(np.array([[1], [0]]), np.ones((2, 1), np.float32)), {})
    assert load_graph(url)[0].n == 2 and load_lists(url) is None
    assert os.listdir(tmp_path) == ["g"]
    for call in (GraphStore, load_graph):
        with pytest.raises(D2ScaleError, match="graph directory memory://g is not a local path"):
            call("memory://g")
