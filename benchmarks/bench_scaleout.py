"""Graph tasks across Dask workers: the graph stage of one pool on a loopback cluster of 1
and of 2 single-threaded worker processes (``dask scheduler`` + ``dask worker --nthreads
1``), round robin, the identical graph checked; the speed-up and the serial share it implies.

    python benchmarks/bench_scaleout.py --rows 400000 --repeat 2     # prints one JSON document
    python benchmarks/bench_scaleout.py --pool DIR --repeat 1          # an existing pool

With speed-up S on 2 workers, Amdahl's law gives the serial share s = 2/S − 1 (0: perfect
scaling, 1: none); the driver's own steps (sample, PCA + k-means training, tuning) from the
graph's ``meta.json`` timings are reported beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np
from common import D2SCALE, host_info

DASK = os.path.join(os.path.dirname(sys.executable), "dask")
DRIVER_STEPS = ("sample", "train", "tune")  # graph sub-steps the driver runs itself


def _start(argv: list[str], cwd: str, log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.Popen(
        argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


@contextlib.contextmanager
def loopback_cluster(workers: int, root: str) -> Iterator[str]:
    """A scheduler and ``workers`` single-threaded worker processes on 127.0.0.1; yields the
    scheduler file."""
    os.makedirs(root, exist_ok=True)
    sched_file = os.path.join(root, "scheduler.json")
    with open(os.path.join(root, "cluster.log"), "w") as log:
        procs = [
            _start(
                [
                    DASK,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    sched_file,
                ],
                root,
                log,
            )
        ]
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(sched_file) and time.monotonic() < deadline:
                time.sleep(0.2)
            for i in range(workers):
                wdir = os.path.join(root, f"worker-{i}")
                os.makedirs(wdir, exist_ok=True)
                procs.append(
                    _start(
                        [
                            DASK,
                            "worker",
                            "--scheduler-file",
                            sched_file,
                            "--host",
                            "127.0.0.1",
                            "--nthreads",
                            "1",
                            "--nworkers",
                            "1",
                            "--local-directory",
                            wdir,
                            "--no-dashboard",
                        ],
                        wdir,
                        log,
                    )
                )
            from distributed import Client

            with Client(scheduler_file=sched_file, timeout="60s") as client:
                client.wait_for_workers(workers, timeout=120)
            yield sched_file
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def graph_run(pool: str, out: str, sched_file: str, feature_type: str) -> dict:
    """One ``d2scale graph`` on the cluster: wall seconds and the graph's meta.json facts."""
    argv = [
        *D2SCALE,
        "graph",
        "--metadata-dir",
        pool,
        "--out",
        out,
        "--feature-type",
        feature_type,
        "--n-neighbors",
        "10",
        "--scheduler-file",
        sched_file,
        "--quiet",
    ]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "meta.json")) as fh:
        meta = json.load(fh)
    return {
        "wall_s": round(wall, 2),
        "timings": meta.get("timings", {}),
        "recall": meta.get("recall"),
        "index": meta.get("index"),
    }


def same_graph(a: str, b: str) -> bool:
    return all(
        np.array_equal(np.load(os.path.join(a, f)), np.load(os.path.join(b, f)))
        for f in ("neighbors.npy", "distances.npy")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--feature-type", default="image")
    ap.add_argument("--repeat", type=int, default=2, help="rounds of (1 worker, 2 workers)")
    ap.add_argument("--workdir", default=None, help="keeps the generated pool (default: temp)")
    ap.add_argument("--pool", default=None, help="an existing pool (instead of --rows/--shards)")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench-scaleout-")
    pool = args.pool or os.path.join(work, f"pool-{args.rows}")
    if args.pool is None and not os.path.exists(
        os.path.join(pool, f"{args.shards - 1:08d}.parquet")
    ):
        subprocess.run(
            [
                *D2SCALE,
                "synth",
                "--out",
                pool,
                "--rows",
                str(args.rows),
                "--shards",
                str(args.shards),
                "--seed",
                "1",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    rounds: list[dict] = []
    for r in range(args.repeat):
        runs = {}
        for workers in (1, 2):
            out = os.path.join(work, f"graph-{workers}w-{r}")
            subprocess.run(["rm", "-rf", out], check=True)
            with loopback_cluster(workers, os.path.join(work, f"cluster-{workers}w")) as sched:
                runs[workers] = graph_run(pool, out, sched, args.feature_type)
        runs["identical"] = same_graph(
            os.path.join(work, f"graph-1w-{r}"), os.path.join(work, f"graph-2w-{r}")
        )
        rounds.append(runs)
    one = float(np.median([r[1]["wall_s"] for r in rounds]))
    two = float(np.median([r[2]["wall_s"] for r in rounds]))
    speedup = one / two
    driver = {s: rounds[-1][2]["timings"].get(s) for s in DRIVER_STEPS}
    print(
        json.dumps(
            {
                "benchmark": "graph_scaleout",
                "host": host_info(),
                "load_average_end": [round(v, 2) for v in os.getloadavg()],
                "params": {
                    "pool": pool,
                    "rows": args.rows if args.pool is None else None,
                    "shards": args.shards if args.pool is None else None,
                    "feature_type": args.feature_type,
                    "k": 10,
                    "repeat": args.repeat,
                },
                "rounds": rounds,
                "wall_s_1_worker": one,
                "wall_s_2_workers": two,
                "speedup": round(speedup, 3),
                "serial_share_amdahl": round(2 / speedup - 1, 3),
                "driver_steps_s_2_workers": driver,
                "identical_graphs": all(r["identical"] for r in rounds),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
