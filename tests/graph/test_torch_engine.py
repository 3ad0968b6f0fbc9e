"""The torch graph engine on the CPU: the compiled engine's exact graph (ids and distance
bits), IVF recall against the exact graph, the same graph for any shard or partition size,
engine choice, one-line errors, and the CLI's record of what ran."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2scale.errors import D2ScaleError
from d2scale.graph import build_knn_graph, scan, torch_engine
from d2scale.types import ArrayBlocks

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a loaded 2-core machine torch's thread pool spin-waits (10×
    slower on these tiny blocks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tie_free(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian clusters (IVF has lists to find), a few exact duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, dim))
    x[10:15] = x[3]
    return x.astype(np.float32)


def same_graph(a, b) -> None:
    np.testing.assert_array_equal(a.neighbors, b.neighbors)
    np.testing.assert_array_equal(a.distances.view(np.uint32), b.distances.view(np.uint32))


def torch_graph(x, block=1000, **kw):
    options = {k: kw.pop(k) for k in ("precision", "device_budget") if k in kw}
    kw.setdefault("n_neighbors", 10)
    return build_knn_graph(ArrayBlocks(x, block), graph_engine="torch", device="cpu",
                           engine_options=options, **kw)  # fmt: skip


X_EXACT = tie_free(2000, 24, seed=4)


@pytest.fixture(scope="module")
def compiled_exact():
    return build_knn_graph(ArrayBlocks(X_EXACT, 700), n_neighbors=10, index="exact",
                           graph_engine="compiled")[0]  # fmt: skip


@pytest.mark.parametrize(
    "precision, block, budget",
    [("fp32", 2000, None), ("fp16", 700, None), ("bf16", 300, 24 * 2 * 450)],
)
def test_exact_equals_the_compiled_engines_graph(compiled_exact, precision, block, budget):
    graph, info = torch_graph(X_EXACT, block, index="exact", precision=precision,
                              device_budget=budget)  # fmt: skip
    same_graph(graph, compiled_exact)
    assert info["graph_engine"] == "torch" and info["device"] == "cpu"
    assert info["precision"] == precision and info["recall"] == 1.0
    assert info["shards"] == (5 if budget else 1)


def test_exact_equals_the_compiled_engine_with_duplicates_and_ties():
    x = tie_free(1500, 16, seed=5)
    x[100:130] = x[7]  # a group larger than the candidates fetched
    x[200:203] = x[400]
    x[600] = x[601] + 1e-6
    u = np.random.default_rng(8).standard_normal((60, 16))  # 60 rows around row 900 at radii
    radii = 0.3 * (1 + 1e-5 * np.arange(60))  # closer together than bf16 can tell apart
    x[901:961] = x[900] + radii[:, None] * u / np.linalg.norm(u, axis=1, keepdims=True)
    ref, _ = build_knn_graph(ArrayBlocks(x, 500), n_neighbors=10, index="exact",
                             graph_engine="compiled")  # fmt: skip
    graph, info = torch_graph(x, 500, index="exact", precision="bf16")
    same_graph(graph, ref)
    assert info["unique_rows"] == 1500 - 30 - 3
    assert info["rows_searched_again"] > 0  # row 900's first candidates were not certain


def test_exact_equals_the_compiled_engine_searching_through_its_pca_space():
    rng = np.random.default_rng(10)  # low-rank rows: the compiled exact search goes through PCA
    z = rng.standard_normal((40, 12))[rng.integers(0, 40, 5000)] + 0.3 * rng.standard_normal(
        (5000, 12)
    )
    proj = np.linalg.qr(rng.standard_normal((128, 12)))[0]
    x = (z @ proj.T + 0.02 * rng.standard_normal((5000, 128))).astype(np.float32)
    ref, facts = build_knn_graph(ArrayBlocks(x, 1500), n_neighbors=10, index="exact",
                                 graph_engine="compiled")  # fmt: skip
    assert facts.get("exact_search_dim")  # (else this test checks nothing new)
    same_graph(torch_graph(x, 2000, index="exact", precision="bf16")[0], ref)


def test_error_bound_holds_for_half_precision_gemms():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((300, 64)) * rng.uniform(0.01, 30, (300, 1))).astype(np.float32)
    x[:, :5] *= 1e-6  # small entries: fp16 subnormals before scaling
    exact = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    norms2 = scan.norms2(x).astype(np.float64)  # float32 sums, as the engine takes them
    for precision in ("fp16", "bf16", "fp32"):
        dev = torch_engine.Device(torch, "cpu", precision, out_fp32=precision == "fp32")
        if precision == "fp16":
            dev.scale = torch_engine._fp16_scale(float(np.sqrt(norms2.max())))
        q = dev.upload(x)
        part = dev.scores(q, q, torch.from_numpy(norms2.astype(np.float32)))
        approx = norms2[:, None] + part.double().numpy()
        eps = torch_engine.error_bound(precision, 64, np.sqrt(norms2), np.sqrt(norms2.max()),
                                       dev.scale, dev.out_unit)  # fmt: skip
        err = np.abs(approx - exact)
        assert (err <= eps[:, None]).all(), precision
        assert (err / eps[:, None]).max() > 0.01  # and is not absurdly loose


X_IVF = clustered(6000, 48, seed=0)


@pytest.fixture(scope="module")
def ivf_graph():
    return torch_graph(X_IVF, 1000, index="ivf", recall=0.9)


def test_ivf_reaches_the_recall_target_against_the_exact_graph(ivf_graph):
    exact, _ = torch_graph(X_IVF, 1000, index="exact")
    graph, info = ivf_graph
    found = np.mean([np.intersect1d(a, b).size / 10 for a, b in
                     zip(graph.neighbors, exact.neighbors, strict=True)])  # fmt: skip
    assert info["index"] == "ivf" and info["recall_reached"]
    assert info["nprobe"] < info["nlist"] and found >= 0.9
    assert info["recall"] - 3 * info["recall_se"] <= found  # the measured recall is honest


def test_ivf_graph_is_the_same_for_any_shards_and_partitions(ivf_graph):
    again, info = torch_graph(X_IVF, 2500, index="ivf", recall=0.9, device_budget=48 * 4 * 700)
    assert info["shards"] > 4
    same_graph(again, ivf_graph[0])


def test_missing_torch_is_one_error_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(D2ScaleError, match="graph engine 'torch' needs PyTorch") as e:
        build_knn_graph(ArrayBlocks(X_EXACT), n_neighbors=5, graph_engine="torch")
    assert "\n" not in str(e.value)


def test_auto_is_the_compiled_engine_without_a_gpu(monkeypatch):
    from d2scale import backends

    monkeypatch.setattr(torch_engine, "torch_cuda_available", lambda: False)
    monkeypatch.setitem(backends._RUNTIMES, "torch", (lambda: False, "torch with CUDA"))
    monkeypatch.setitem(backends._RUNTIMES, "cupy", (lambda: False, "CuPy"))
    assert torch_engine.resolve_engine("auto", "auto")[:2] == ("compiled", None)
    assert torch_engine.resolve_engine("torch", "auto")[:2] == ("torch", "cpu")
    with pytest.raises(D2ScaleError, match="--device cuda needs a CUDA GPU that torch"):
        torch_engine.resolve_engine("torch", "cuda")
    with pytest.raises(D2ScaleError, match="--device cuda needs a CUDA GPU that CuPy"):
        torch_engine.resolve_engine("auto", "cuda")  # the compiled engine's CuPy scan
    with pytest.raises(D2ScaleError, match="'graph_engine' parameter must be one of"):
        torch_engine.resolve_engine("faiss", "auto")
    monkeypatch.setattr(torch_engine, "torch_cuda_available", lambda: True)
    assert torch_engine.resolve_engine("auto", "auto")[:2] == ("torch", "cuda")
    assert torch_engine.resolve_engine("auto", "cpu")[:2] == ("compiled", None)


def test_stage_keys_of_compiled_graphs_are_unchanged(monkeypatch):
    from d2scale.select.graph_stage import engine_key

    monkeypatch.setattr(torch_engine, "torch_cuda_available", lambda: False)
    assert engine_key("auto", "auto") == {} and engine_key("compiled", "auto") == {}
    assert engine_key("torch", "cpu") == {"graph_engine": "torch", "graph_device": "cpu"}


def test_resume_refuses_a_directory_of_the_other_engine(tmp_path):
    x = X_EXACT[:500]
    build_knn_graph(ArrayBlocks(x), n_neighbors=5, index="exact", graph_engine="torch",
                    device="cpu", workdir=str(tmp_path))  # fmt: skip
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["graph_engine"] == "torch" and meta["timings"]["search"] >= 0
    (tmp_path / "meta.json").unlink()  # an unfinished build of the torch engine
    with pytest.raises(D2ScaleError, match="other parameters"):
        build_knn_graph(ArrayBlocks(x), n_neighbors=5, index="exact", graph_engine="compiled",
                        workdir=str(tmp_path))  # fmt: skip


def test_a_killed_ivf_build_reuses_its_lists_tuning_and_search_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_engine, "QUERY_BLOCK", 1000)
    x = X_IVF[:3000]
    first, _ = torch_graph(x, 1000, index="ivf", recall=0.9, workdir=str(tmp_path))
    (tmp_path / "meta.json").unlink()  # killed before the end, during the last block
    (tmp_path / "parts" / "torch-search-00002.npz").unlink()
    again, info = torch_graph(x, 1000, index="ivf", recall=0.9, workdir=str(tmp_path))
    same_graph(again, first)
    assert "tune" not in info["timings"]  # the model was restored
    assert info["search_blocks_reused"] == 2


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "d2scale.cli.main", *map(str, args)],
                          capture_output=True, text=True)  # fmt: skip


def test_cli_graph_with_the_torch_engine_on_the_cpu(small_pool, tmp_path):
    from d2scale.pool.sources import PoolEmbeddings, feature_keys, open_pool

    proc = run_cli("graph", "--metadata-dir", small_pool, "--out", tmp_path / "g", "--quiet",
                   "--graph-engine", "torch", "--device", "cpu", "--n-neighbors", 5)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    blocks = PoolEmbeddings(open_pool(small_pool), feature_keys("l14", "image_text"))
    ref, _ = build_knn_graph(blocks, n_neighbors=5, graph_engine="compiled")
    np.testing.assert_array_equal(np.load(tmp_path / "g" / "neighbors.npy"), ref.neighbors)
    meta = json.loads((tmp_path / "g" / "meta.json").read_text())
    assert (meta["graph_engine"], meta["device"], meta["index"]) == ("torch", "cpu", "exact")
    bad = run_cli("graph", "--metadata-dir", small_pool, "--out", tmp_path / "x",
                  "--graph-engine", "tensorflow")  # fmt: skip
    assert bad.returncode == 1 and "graph_engine" in bad.stderr


@pytest.mark.slow
def test_select_records_the_torch_engine_in_run_json(small_pool, tmp_path):
    sel = run_cli("select", "--metadata-dir", small_pool, "--out", tmp_path, "--quiet",
                  "--graph-engine", "torch", "--device", "cpu", "--n-neighbors", 5,
                  "--workers", 2)  # fmt: skip
    assert sel.returncode == 0, sel.stderr
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["params"]["graph_engine"] == "torch"
    assert (record["graph"]["graph_engine"], record["graph"]["device"]) == ("torch", "cpu")


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("faiss", "dask", "distributed"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
"""


def test_the_torch_engine_needs_neither_faiss_nor_dask(tmp_path):
    """As on the GPU machine, which has torch but no faiss or Dask."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    code = ("import numpy as np; from d2scale.graph import build_knn_graph; "
            "from d2scale.types import ArrayBlocks; "
            "x = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32); "
            "g, i = build_knn_graph(ArrayBlocks(x), n_neighbors=5, index='ivf', nlist=8, "
            "graph_engine='torch', device='cpu'); print(i['graph_engine'], g.n)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.split() == ["torch", "400"], proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import faiss"], env=env, capture_output=True)
    assert proc.returncode == 1  # the blocker works


def test_the_compiled_engine_without_faiss_is_one_error_line(monkeypatch):
    from d2scale.graph import ivf

    monkeypatch.setattr(ivf, "faiss", None)
    with pytest.raises(D2ScaleError, match="needs faiss .* use --graph-engine torch"):
        ivf.train_centroids(X_IVF[:500], 8, seed=0)


def bench(*argv, capsys) -> dict:
    from gpu_graph import main

    assert main(list(map(str, argv))) == 0
    return json.loads(capsys.readouterr().out)


def test_gpu_check_steps_run_on_the_cpu_at_a_tiny_size(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    tiny = ("--device", "cpu", "--dim", 16, "--seed", 3)
    got = bench("graph", "--rows", 1500, "--exact", "--save", tmp_path, *tiny, capsys=capsys)
    assert got["exact"]["recall"] == 1.0 and got["exact"]["graph_engine"] == "torch"
    assert got["exact"]["recall_rows"] == 1500  # brute force finds nothing closer
    assert got["ivf"]["index"] == "ivf" and 0.9 <= got["ivf"]["recall_all_rows"] <= 1.0
    big = bench("graph", "--rows", 2000, "--recall-rows", 300, *tiny, capsys=capsys)
    assert big["ivf"]["recall_rows"] == 300 and big["ivf"]["recall"] >= 0.9
    cpu = bench("cpu-engine", "--data", tmp_path, *tiny, capsys=capsys)
    assert cpu["compiled"]["graph_engine"] == "compiled" and cpu["rows"] == 1500
    assert cpu["compiled"]["recall_all_rows"] == 1.0  # 1,500 rows: the compiled graph is exact
    equal = bench("equal", "--rows", 800, *tiny, capsys=capsys)
    assert equal["compiled-cpu"]["identical_to_cpu"] and equal["cpu"]["index"] == "exact"
    mp = bench("mp", "--data", tmp_path, "--mp-devices", "cpu", *tiny, capsys=capsys)
    assert mp["nodes"] == 1500 and mp["cpu"]["edges"] > 0
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "mp.json").write_text(json.dumps(mp))
    merged = bench("merge", tmp_path / "mp.json", tmp_path / "broken.json", capsys=capsys)
    assert merged["mp"] == mp and "the step failed" in merged["broken"]["error"]


@pytest.mark.slow
def test_gpu_check_script_dry_run_on_the_cpu(tmp_path):
    env = {**os.environ, "SKIP_INSTALL": "1", "PYTHON": sys.executable, "GPU_CHECK_DEVICE": "cpu",
           "GPU_CHECK_ROWS": "1000 1500 2000 1500", "GPU_CHECK_DIM": "16",
           "GPU_CHECK_DATA": str(tmp_path / "data")}  # fmt: skip
    script = str(ROOT / "benchmarks" / "gpu_check.sh")
    proc = subprocess.run(["bash", script, str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert set(doc) == {"versions", "equal-50k", "graph-1m", "cpu-1m", "graph-12m", "mp-12m",
                        "select-4m"}  # fmt: skip
    assert doc["equal-50k"]["compiled-cpu"]["identical_to_cpu"]
    assert not [name for name, step in doc.items() if "error" in step or "skipped" in step]
    assert doc["select-4m"]["graph"]["graph_engine"] == "torch"
