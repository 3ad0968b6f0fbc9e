"""Peak memory of ``d2scale select`` with and without ``--memory-limit`` (same uids?).

    python benchmarks/bench_memory.py [--rows 600000] [--shards 12] [--limit 512MB]

Writes (once, cached in ``--workdir``) a synthetic DataComp pool, runs
``d2scale select --feature-type image_text`` (1536-d) twice in fresh processes — with the
memory limit and without — and prints ONE JSON document with each run's peak RSS (from its
``run.json``: the process's own peak, ``VmHWM``), wall and CPU time, the 1-minute load average
before and after, graph facts (shards, re-ranking blocks) and whether the two uid files are
equal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import time

import numpy as np
from common import D2SCALE, host_info


def pool(workdir: str, rows: int, shards: int) -> str:
    path = os.path.join(workdir, f"pool-{rows}-{shards}")
    if not os.path.exists(os.path.join(path, ".complete")):
        from d2scale.pool.synth import write_pool

        write_pool(path, rows=rows, shards=shards, seed=0, layout="f16-stored")
        open(os.path.join(path, ".complete"), "w").close()
    return path


def select(pool_dir: str, out: str, limit: str | None, fraction: float) -> dict:
    cmd = [*D2SCALE, "select", "--metadata-dir", pool_dir,
           "--feature-type", "image_text", "--fraction", str(fraction), "--out", out]  # fmt: skip
    if limit:
        cmd += ["--memory-limit", limit]
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: a reused graph stage would not count
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    g = run["graph"]
    keys = ("index", "nlist", "nprobe", "candidates", "pca_dim", "shards", "rerank_blocks",
            "largest_shard_bytes", "shard_budget_bytes", "recall", "unique_rows",
            "timings")  # fmt: skip
    return {"memory_limit": limit, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "peak_rss_gib": round(run["cluster"]["peak_rss_bytes_driver"] / 2**30, 3),
            "graph": {key: g.get(key) for key in keys},
            "uids": os.path.join(out, "uids.npy")}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=600_000)
    p.add_argument("--shards", type=int, default=12)
    p.add_argument("--limit", default="512MB")
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--workdir", default="/tmp/d2scale-bench-memory")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.perf_counter()
    path = pool(args.workdir, args.rows, args.shards)
    t_pool = time.perf_counter() - t0
    limited = select(path, os.path.join(args.workdir, "out-limited"), args.limit, args.fraction)
    free = select(path, os.path.join(args.workdir, "out-unlimited"), None, args.fraction)
    same = bool(np.array_equal(np.load(limited["uids"]), np.load(free["uids"])))
    print(json.dumps({"benchmark": "select_memory", "host": host_info(), "rows": args.rows,
                      "dim": 1536, "float16_embedding_gib": round(args.rows * 1536 * 2 / 2**30, 2),
                      "pool_generation_s": round(t_pool, 1), "limited": limited,
                      "unlimited": free, "uids_equal": same}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
