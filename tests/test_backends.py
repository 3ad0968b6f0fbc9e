"""Where work runs: the local cluster listens on loopback only, an unreachable scheduler is
refused in seconds, and ``--device cuda`` without a GPU is refused before any work."""

import importlib
import json
import time

import psutil
import pytest

from d2scale import backends
from d2scale.backends import dask_client
from d2scale.cli.main import main
from d2scale.errors import D2ScaleError

LOOPBACK = ("127.0.0.1", "::1")


def _listening() -> list[tuple[str, int]]:
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


@pytest.mark.own_cluster
def test_local_cluster_listens_on_loopback_only():
    before = set(_listening())
    with dask_client(workers=1) as client:
        now = set(_listening())
        assert now - before, "the cluster's HTTP servers should be listening"
        assert all(ip in LOOPBACK for ip, _ in now), now  # nothing in this process is wider
        assert backends.cluster_facts(client)["dashboard"] is None


def test_select_records_no_dashboard_of_the_local_cluster(small_pool, tmp_path):
    out = tmp_path / "out"
    argv = ["select", "--metadata-dir", small_pool, "--out", str(out), "--index", "exact",
            "--workers", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["cluster"]["dashboard"] is None
    assert "127.0.0.1" not in json.dumps(record) and "0.0.0.0" not in json.dumps(record)


@pytest.mark.parametrize("flag", ["--scheduler", "--scheduler-file"])
def test_refused_scheduler_is_one_line_within_seconds(flag, small_pool, tmp_path, capsys):
    where = "tcp://127.0.0.1:1"
    if flag == "--scheduler-file":
        where = str(tmp_path / "scheduler.json")
        (tmp_path / "scheduler.json").write_text(json.dumps({"address": "tcp://127.0.0.1:1"}))
    t0 = time.perf_counter()
    rc = main(["select", "--metadata-dir", small_pool, "--out", str(tmp_path / "o"), flag, where,
               "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "cannot connect to the Dask scheduler" in err[0], err
    assert time.perf_counter() - t0 < 8


@pytest.mark.parametrize("flag", ["--scheduler", "--scheduler-file"])
def test_workers_beside_a_running_cluster_is_refused(flag, small_pool, tmp_path, capsys):
    """--workers sizes only the local cluster: with a running one it would change nothing."""
    rc = main(["select", "--metadata-dir", small_pool, "--out", str(tmp_path / "o"), flag,
               str(tmp_path / "scheduler.json"), "--workers", "2", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "drop --workers" in err[0], err
    assert not (tmp_path / "o").exists()


def test_cuda_without_gpu_is_refused_before_any_work(small_pool, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    out = tmp_path / "out"
    argv = ["select", "--metadata-dir", small_pool, "--out", str(out), "--index", "exact",
            "--workers", "1"]  # fmt: skip
    assert main([*argv, "--quiet"]) == 0  # every stage cached on the CPU
    before = (out / "run.json").read_text()
    capsys.readouterr()
    for where in (out, tmp_path / "fresh"):
        assert main([*argv[:3], "--out", str(where), *argv[5:], "--device", "cuda"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("d2scale: error: --device cuda needs a CUDA GPU"), err
        assert "--device cpu" in err and "device=" not in err and "read" not in err
    assert (out / "run.json").read_text() == before  # nothing rewritten
    assert not (tmp_path / "fresh").exists()


def test_cuda_is_refused_by_the_graph_command_too(small_pool, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    assert main(["graph", "--metadata-dir", small_pool, "--out", str(tmp_path / "g"),
                 "--device", "cuda"]) == 1  # fmt: skip
    assert "--device cuda needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_cpu_only_variant_with_cuda_says_the_flag():
    with pytest.raises(D2ScaleError, match="--greedy standby runs on the CPU only: use --device"):
        backends.resolve_device("cuda", "--greedy standby")


KERNELS = """
from numba import njit


@njit(cache=True, inline="always")
def _helper(x):
    return x + 1


@njit(cache=True)
def kernel(x):
    return _helper(x) * 2
"""


def test_the_first_real_compilation_is_announced_once(tmp_path, monkeypatch):
    """Kernels without a cache compile: said once for two compilations; calling them again,
    or loading them from their cache in a fresh dispatcher, says nothing."""
    (tmp_path / "d2scale_probe_kernels.py").write_text(KERNELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import d2scale_probe_kernels as mod

    said = []
    with backends.announcing_compiles(said.append):
        assert mod.kernel(1) == 4
        assert mod.kernel(1.5) == 5.0  # a second signature: a second compilation
    assert said == [backends.COMPILING_NOTICE]
    mod = importlib.reload(mod)  # a fresh dispatcher: loads both from their cache
    with backends.announcing_compiles(said.append):
        assert mod.kernel(3) == 8
        assert mod.kernel(2.5) == 7.0
    assert said == [backends.COMPILING_NOTICE]
