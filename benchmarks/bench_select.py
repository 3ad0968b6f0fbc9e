"""End-to-end wall time of `d2scale select` on synthetic pools; prints one JSON document.

    python benchmarks/bench_select.py --sizes 100000,1000000 [--workdir DIR] [-- extra flags]
    python benchmarks/bench_select.py --pools DIR[,DIR…] [--workdir DIR] [-- extra flags]

Pools are generated once with `d2scale synth` (0.5M rows per shard, as in DataComp, f16
compressed npz) under --workdir and reused, or given (--pools: existing pool directories).
Each runs `d2scale select --fraction 0.3` as a subprocess; the JSON gives wall time, the
stage timings and graph facts from run.json (recall included), and, sampled every second,
the peak RSS of the select's process tree and the peak disk use of its output directory
and of d2scale's temporary directories (the graph's spill).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import D2SCALE, host_info


def ensure_pool(workdir: str, rows: int) -> tuple[str, float | None]:
    path = os.path.join(workdir, f"pool-{rows}")
    if os.path.exists(os.path.join(path, "_COMPLETE")):
        return path, None
    shards = max(1, rows // 500_000) if rows >= 500_000 else 4
    t0 = time.perf_counter()
    subprocess.run(
        [*D2SCALE, "synth", "--out", path, "--rows", str(rows), "--shards", str(shards),
         "--seed", "0"], check=True, stdout=sys.stderr,  # stdout is the JSON document
    )  # fmt: skip
    open(os.path.join(path, "_COMPLETE"), "w").close()
    return path, round(time.perf_counter() - t0, 1)


def run_select(pool: str, out: str, extra: list[str]) -> dict:
    cmd = [*D2SCALE, "select", "--metadata-dir", pool, "--out", out, "--fraction", "0.3", *extra]
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with open(f"{out}-stderr.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peaks = _sample_peaks(proc, [out, tempfile.gettempdir()])
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        with open(f"{out}-stderr.log", errors="replace") as f:
            return {"command": " ".join(cmd), "error": f.read().strip()[-2000:]}
    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)
    graph = {k: v for k, v in record["graph"].items() if k != "recall_curve"}
    return {"command": " ".join(cmd), "wall_s": round(wall, 2), "timings_s": record["timings_s"],
            "graph": graph, "counts": record["counts"], **peaks}  # fmt: skip


def _sample_peaks(proc: subprocess.Popen, dirs: list[str]) -> dict:
    """Peak RSS of ``proc`` and its children, and peak bytes under ``dirs[0]`` and under
    d2scale's temporary directories in ``dirs[1]``, sampled every second until it exits."""
    import psutil

    rss = disk_out = disk_tmp = 0
    top = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
            rss = max(rss, sum(p.memory_info().rss for p in procs))
        except psutil.Error:
            pass
        disk_out = max(disk_out, _bytes_under(dirs[0]))
        tmp = [os.path.join(dirs[1], d) for d in _listdir(dirs[1]) if d.startswith("d2scale")]
        disk_tmp = max(disk_tmp, sum(_bytes_under(d) for d in tmp))
        time.sleep(1.0)
    return {"peak_rss_gib": round(rss / 2**30, 2), "peak_out_dir_gib": round(disk_out / 2**30, 2),
            "peak_tmp_spill_gib": round(disk_tmp / 2**30, 2)}  # fmt: skip


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _bytes_under(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="100000")
    p.add_argument("--pools", default="", help="existing pool directories (instead of --sizes)")
    p.add_argument("--workdir", default=os.path.expanduser("~/.cache/d2scale-bench"))
    p.add_argument("extra", nargs="*", help="extra flags for d2scale select (after --)")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    results = []
    if args.pools:
        runs = [(p, None, os.path.basename(p.rstrip("/"))) for p in args.pools.split(",")]
    else:
        runs = [(*ensure_pool(args.workdir, int(s)), s) for s in args.sizes.split(",")]
    for pool, synth_s, name in runs:
        out = os.path.join(args.workdir, f"out-{name}")
        results.append({"pool": pool, "synth_s": synth_s, **run_select(pool, out, args.extra)})
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "select", "host": host_info(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
