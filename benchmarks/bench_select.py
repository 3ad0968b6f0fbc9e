"""End-to-end wall time of `d2scale select` on synthetic pools; prints one JSON document.

    python benchmarks/bench_select.py --sizes 100000,1000000 [--workdir DIR] [-- extra flags]

Pools are generated once with `d2scale synth` (0.5M rows per shard, as in DataComp, f16
compressed npz) under --workdir and reused. Each size runs `d2scale select --fraction 0.3`
as a subprocess; the JSON gives wall time, the stage timings from run.json and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from common import host_info


def ensure_pool(workdir: str, rows: int) -> tuple[str, float | None]:
    path = os.path.join(workdir, f"pool-{rows}")
    if os.path.exists(os.path.join(path, "_COMPLETE")):
        return path, None
    shards = max(1, rows // 500_000) if rows >= 500_000 else 4
    t0 = time.perf_counter()
    subprocess.run(
        ["d2scale", "synth", "--out", path, "--rows", str(rows), "--shards", str(shards),
         "--seed", "0"], check=True, stdout=sys.stderr,  # stdout is the JSON document
    )  # fmt: skip
    open(os.path.join(path, "_COMPLETE"), "w").close()
    return path, round(time.perf_counter() - t0, 1)


def run_select(pool: str, out: str, extra: list[str]) -> dict:
    cmd = ["d2scale", "select", "--metadata-dir", pool, "--out", out, "--fraction", "0.3", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"command": " ".join(cmd), "error": proc.stderr.strip()[-2000:]}
    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    return {"command": " ".join(cmd), "wall_s": round(wall, 2), "timings_s": record["timings_s"],
            "graph": record["graph"], "counts": record["counts"],
            "peak_rss_gib_max_so_far": round(peak, 2)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="100000")
    p.add_argument("--workdir", default=os.path.expanduser("~/.cache/d2scale-bench"))
    p.add_argument("extra", nargs="*", help="extra flags for d2scale select (after --)")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    results = []
    for rows in (int(s) for s in args.sizes.split(",")):
        pool, synth_s = ensure_pool(args.workdir, rows)
        out = os.path.join(args.workdir, f"out-{rows}")
        results.append({"rows": rows, "synth_s": synth_s, **run_select(pool, out, args.extra)})
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "select", "host": host_info(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
