"""Runs on a real Dask cluster: a scheduler and two worker processes on 127.0.0.1, started
with the ``dask scheduler`` / ``dask worker`` commands, each worker in its own temporary
working and local directory. A run there gives exactly the uids of the embedded local run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from d2scale.params import SelectParams
from d2scale.progress import Progress
from d2scale.select.pipeline import select

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


def _start(argv: list[str], cwd, log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):  # workers (and their nannies' children) first
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``(address, scheduler_file, worker_dirs)`` of a running scheduler + 2 worker processes."""
    from distributed import Client

    root = tmp_path_factory.mktemp("cluster")
    sched_file = str(root / "scheduler.json")
    log = open(root / "cluster.log", "w")  # noqa: SIM115
    procs = [_start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", sched_file], root, log)]  # fmt: skip
    worker_dirs = []
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sched_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        for i in range(2):
            wdir = root / f"worker-{i}"
            wdir.mkdir()
            worker_dirs.append(wdir)
            procs.append(_start([DASK, "worker", "--scheduler-file", sched_file, "--host",
                                 "127.0.0.1", "--nthreads", "1", "--nworkers", "1", "--name",
                                 f"w{i}", "--local-directory", str(wdir), "--no-dashboard"],
                                wdir, log))  # fmt: skip
        with Client(scheduler_file=sched_file, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
            pids = client.run(os.getpid)
        assert len(set(pids.values()) | {os.getpid()}) == 3  # two processes besides this one
        yield address, sched_file, worker_dirs
    finally:
        _stop(procs)
        log.close()


def local_run(pool, out, **kw) -> np.ndarray:
    params = SelectParams(metadata_dir=str(pool), out=str(out), workers=2, **kw)
    select(params, Progress(quiet=True))
    return np.load(os.path.join(out, "uids.npy"))


def cli_select(pool, out, cwd, *flags) -> dict:
    argv = [sys.executable, "-m", "d2scale.cli.main", "select", "--metadata-dir", str(pool),
            "--out", out, "--quiet", *flags]  # fmt: skip
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(cwd, out, "run.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("index", ["exact", pytest.param("ivf", marks=pytest.mark.slow)])
def test_cluster_run_gives_the_uids_of_the_local_run(cluster, small_pool, tmp_path, index):
    address, _, worker_dirs = cluster
    expected = local_run(small_pool, tmp_path / "local", index=index, fraction=[0.3])
    # a relative --out: the workers run in other directories, so it must not reach them as is
    record = cli_select(small_pool, "remote", tmp_path, "--scheduler", address,
                        "--index", index, "--fraction", "0.3")  # fmt: skip
    assert np.array_equal(np.load(tmp_path / "remote" / "uids.npy"), expected)
    assert record["graph"]["index"] == index
    assert record["cluster"]["scheduler"] == address and record["cluster"]["workers"] == 2
    assert len(record["cluster"]["peak_rss_bytes_workers"]) == 2
    for wdir in worker_dirs:  # tasks wrote nothing relative to a worker's own directory
        assert not (wdir / "remote").exists() and not (wdir / "work").exists()


def resplit(src, dst, bounds: list[int]) -> None:
    """The rows of pool ``src`` (4 shards) written to ``dst`` cut at ``bounds``."""
    dst.mkdir()
    table = pa.concat_tables(
        [pq.read_table(os.path.join(src, f"{i:08d}.parquet")) for i in range(4)]
    )
    arrays = []
    for i in range(4):
        with np.load(os.path.join(src, f"{i:08d}.npz")) as z:
            arrays.append({k: z[k].astype(np.float32) for k in z.files})
    merged = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        pq.write_table(table.slice(a, b - a), dst / f"part-{j}.parquet")
        np.savez(dst / f"part-{j}.npz", **{k: v[a:b] for k, v in merged.items()})


def test_scheduler_file_and_other_partitioning(cluster, small_pool, tmp_path):
    _, sched_file, _ = cluster
    expected = local_run(small_pool, tmp_path / "local", fraction=[0.2])
    resplit(small_pool, tmp_path / "pool", [0, 400, 2200, 3000])
    record = cli_select(tmp_path / "pool", str(tmp_path / "remote"), tmp_path,
                        "--scheduler-file", sched_file, "--fraction", "0.2")  # fmt: skip
    assert len(record["input"]["shards"]) == 3 and record["cluster"]["workers"] == 2
    assert np.array_equal(np.load(tmp_path / "remote" / "uids.npy"), expected)


@pytest.mark.slow  # concurrency is also covered locally by test_batch.py
def test_batch_runs_buckets_concurrently_on_the_cluster(cluster, small_pool, tmp_path):
    import yaml

    _, sched_file, _ = cluster
    resplit(small_pool, tmp_path / "b", [0, 1000, 3000])
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({
        "out": "out", "concurrency": 2, "defaults": {"fraction": 0.2, "index": "exact"},
        "buckets": [{"name": "a", "metadata_dir": str(small_pool)},
                    {"name": "b", "metadata_dir": "b", "gamma": 0.5}],
    }))  # fmt: skip
    argv = [sys.executable, "-m", "d2scale.cli.main", "batch", str(jobs), "--scheduler-file",
            sched_file, "--quiet"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    expected = local_run(small_pool, tmp_path / "local", fraction=[0.2], index="exact")
    assert np.array_equal(np.load(tmp_path / "out" / "a" / "uids.npy"), expected)
    b_local = local_run(small_pool, tmp_path / "local-b", fraction=[0.2], index="exact",
                        gamma=0.5)  # fmt: skip
    assert np.array_equal(np.load(tmp_path / "out" / "b" / "uids.npy"), b_local)
    run = json.loads((tmp_path / "out" / "b" / "run.json").read_text())
    assert run["cluster"]["workers"] == 2


def test_missing_scheduler_file_is_one_line(small_pool, tmp_path):
    argv = [
        sys.executable,
        "-m",
        "d2scale.cli.main",
        "select",
        "--metadata-dir",
        small_pool,
        "--out",
        str(tmp_path / "o"),
        "--scheduler-file",
        str(tmp_path / "nope.json"),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "scheduler file" in err[0], err
