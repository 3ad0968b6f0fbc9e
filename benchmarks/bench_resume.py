"""A select SIGKILLed halfway through its graph stage, then rerun, against a clean run; prints
one JSON document.

    python benchmarks/bench_resume.py [--rows 150000 | --pool DIR] [--workdir DIR] [-- flags]

The pool (``d2scale synth``, as ``bench_select.py`` makes it) is made once under --workdir,
or given (--pool: an existing pool directory).
First a clean ``d2scale select`` (its wall time and graph-stage time from ``run.json``);
then the same select into another directory, SIGKILLed when half the clean run's graph-stage
time has passed since its graph stage started (the last sub-step it announced is recorded),
and rerun into that directory. The JSON gives the clean wall time, the killed run's and the
rerun's, their ratio, the rerun's graph sub-step timings, and whether the uids are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
from bench_select import ensure_pool
from common import D2SCALE, host_info

SELECT = [*D2SCALE, "select", "--fraction", "0.3"]
GRAPH_START = "] graph ..."  # the progress line of the graph stage's start


def clean_run(pool: str, out: str, extra: list[str]) -> dict:
    """Wall time of a clean select and its graph-stage time."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([*SELECT, "--metadata-dir", pool, "--out", out, "--quiet", *extra],
                   check=True)  # fmt: skip
    wall = time.perf_counter() - t0
    record = _record(out)
    return {"wall_s": round(wall, 2), "graph_s": record["timings_s"]["graph"],
            "graph_timings_s": record["graph"]["timings"]}  # fmt: skip


def killed_run(pool: str, out: str, after_s: float, extra: list[str]) -> dict:
    """A select SIGKILLed ``after_s`` seconds after its graph stage started."""
    shutil.rmtree(out, ignore_errors=True)
    log = f"{out}-stderr.log"
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen([*SELECT, "--metadata-dir", pool, "--out", out, *extra],
                                stderr=err)  # fmt: skip
        started = None
        while proc.poll() is None:
            if started is None and GRAPH_START in _read(log):
                started = time.perf_counter()
            if started is not None and time.perf_counter() - started >= after_s:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait()
    wall = time.perf_counter() - t0
    steps = [line for line in _read(log).splitlines() if "knn graph:" in line]
    return {"wall_s": round(wall, 2), "killed": proc.returncode == -signal.SIGKILL,
            "last_graph_message": steps[-1].split("] ", 1)[-1] if steps else None}  # fmt: skip


def rerun(pool: str, out: str, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    subprocess.run([*SELECT, "--metadata-dir", pool, "--out", out, "--quiet", *extra],
                   check=True)  # fmt: skip
    wall = time.perf_counter() - t0
    record = _record(out)
    return {"wall_s": round(wall, 2), "graph_s": record["timings_s"]["graph"],
            "graph_timings_s": record["graph"]["timings"]}  # fmt: skip


def _record(out: str) -> dict:
    with open(os.path.join(out, "run.json")) as f:
        return json.load(f)


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=150_000)
    p.add_argument("--pool", help="an existing pool directory (instead of --rows)")
    p.add_argument("--workdir", default=os.path.expanduser("~/.cache/d2scale-bench"))
    p.add_argument("extra", nargs="*", help="extra flags for d2scale select (after --)")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    pool = args.pool or ensure_pool(args.workdir, args.rows)[0]
    name = os.path.basename(pool.rstrip("/")) if args.pool else str(args.rows)
    clean_out = os.path.join(args.workdir, f"resume-{name}-clean")
    killed_out = os.path.join(args.workdir, f"resume-{name}-killed")
    clean = clean_run(pool, clean_out, args.extra)
    killed = killed_run(pool, killed_out, clean["graph_s"] / 2, args.extra)
    again = rerun(pool, killed_out, args.extra)
    same = np.array_equal(np.load(os.path.join(clean_out, "uids.npy")),
                          np.load(os.path.join(killed_out, "uids.npy")))  # fmt: skip
    print(json.dumps({
        "benchmark": "resume", "host": host_info(), "pool": pool,
        "rows": _record(clean_out)["counts"]["n"], "select_flags": args.extra,
        "clean": clean, "killed_at_half_graph": killed, "rerun": again,
        "rerun_over_clean": round(again["wall_s"] / clean["wall_s"], 3),
        "rerun_graph_over_clean_graph": round(again["graph_s"] / clean["graph_s"], 3),
        "identical_uids": bool(same),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
