"""A small pool's select against one numpy GEMM of its Gram matrix, each in a fresh process;
prints one JSON document.

    python benchmarks/bench_small.py [--rows 20000] [--repeats 3] [--workdir DIR]

The pool (``d2scale synth``, as ``bench_select.py`` makes it) is made once under --workdir,
and its embeddings as ``select`` sees them (default features, normalised float32) saved once
as ``.npy``. One select first compiles and caches the kernels; then, round robin,
``d2scale select`` with default options into a fresh output directory (process start to
exit) and a fresh ``python`` that loads the ``.npy`` and computes ``x @ x.T`` (process start
to exit, and the GEMM alone). The JSON gives every time, the medians, and the ratio of the
medians (select / GEMM process): the target is at most 0.3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench_select import ensure_pool
from common import D2SCALE, host_info

GEMM = """
import sys, time
import numpy as np
x = np.load(sys.argv[1])
t0 = time.perf_counter()
g = x @ x.T
print(time.perf_counter() - t0)
"""


def embeddings(pool: str, path: str) -> tuple[int, int]:
    """Save the pool's default select features as float32 ``.npy`` (once): their shape."""
    import numpy as np

    if not os.path.exists(path):
        from d2scale.params import SelectParams
        from d2scale.pool.sources import PoolEmbeddings, feature_keys, open_pool

        p = SelectParams(metadata_dir=pool)
        blocks = PoolEmbeddings(open_pool(pool), feature_keys(p.embedding_model, p.feature_type))
        x = np.concatenate([blocks.load(i) for i in range(len(blocks.sizes))])
        np.save(path, np.ascontiguousarray(x, dtype=np.float32))
    return tuple(np.load(path, mmap_mode="r").shape)


def select_once(pool: str, out: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([*D2SCALE, "select", "--metadata-dir", pool,
                    "--out", out, "--quiet"], check=True)  # fmt: skip
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)
    graph = record.get("graph") or {}
    return {"wall_s": round(wall, 3), "timings_s": record["timings_s"],
            "graph_index": graph.get("index"), "exact_search_dim": graph.get("exact_search_dim"),
            "graph_timings_s": graph.get("timings")}  # fmt: skip


def gemm_once(path: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", GEMM, path], check=True, capture_output=True,
                          text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 3), "gemm_s": round(float(proc.stdout.strip()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=os.path.expanduser("~/.cache/d2scale-bench"))
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    pool, _ = ensure_pool(args.workdir, args.rows)
    npy = os.path.join(args.workdir, f"small-{args.rows}-embeddings.npy")
    shape = embeddings(pool, npy)
    out = os.path.join(args.workdir, f"small-{args.rows}-out")
    warmup = select_once(pool, out)  # compiles and caches the kernels
    selects, gemms = [], []
    for _ in range(args.repeats):  # round robin: both see the same machine state
        selects.append(select_once(pool, out))
        gemms.append(gemm_once(npy))
    sel = statistics.median(r["wall_s"] for r in selects)
    gem = statistics.median(r["wall_s"] for r in gemms)
    print(json.dumps({
        "benchmark": "small", "host": host_info(), "rows": args.rows, "embeddings": shape,
        "warmup_select": warmup, "select": selects, "gemm_process": gemms,
        "median_select_s": sel, "median_gemm_process_s": gem,
        "median_gemm_only_s": statistics.median(r["gemm_s"] for r in gemms),
        "select_over_gemm_process": round(sel / gem, 3), "target": 0.3,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
