"""Fit per-stage costs of `d2scale select` runs at several sizes and extrapolate them to the
DataComp scales; prints one JSON document (docs/scaling.md is written from it).

    python benchmarks/fit_scaling.py OUT_100K OUT_1M [...]

Each OUT is a `select` output directory (its run.json, and its work/ directories for disk
use). Per stage (read, each step of the graph build, forward, reverse, total) the time is
fitted as t = a·N^b (least squares in log-log; with two sizes the line through both), and
the driver's peak memory and each stage directory's bytes as c0 + c1·N. Extrapolations to
12.8M, 128M, 1.28B and 12.8B rows use the fitted exponent and, for comparison, the
exponent of the stage's algorithm (1 for read, forward and the sequential reverse pass,
whose log factor is ignored; 1.5 for the IVF graph build, nlist ≈ 2√N lists scanned at a
fixed nprobe). Both are extrapolations of runs on the machine that made them.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

SCALES = {"small": 12_800_000, "medium": 128_000_000, "large": 1_280_000_000,
          "xlarge": 12_800_000_000}  # fmt: skip
THEORY = {"read": 1.0, "graph": 1.5, "forward": 1.0, "reverse": 1.0, "total": None}


def load(out: str) -> dict:
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    stages = {"read": run["timings_s"]["read"], "graph": run["timings_s"]["graph"],
              "forward": run["timings_s"]["forward"], "reverse": run["timings_s"]["reverse"],
              "total": run["timings_s"]["total"]}  # fmt: skip
    for step, seconds in (run.get("graph") or {}).get("timings", {}).items():
        stages[f"graph.{step}"] = seconds
    disk = {name: _du(s["directory"]) for name, s in run["stages"].items()}
    disk["outputs"] = sum(os.path.getsize(os.path.join(out, f)) for f in run["outputs"])
    return {"n": run["counts"]["n"], "edges": run["counts"]["edges_symmetric"],
            "seconds": stages, "disk_bytes": disk,
            "peak_rss_bytes": run["cluster"]["peak_rss_bytes_driver"],
            "params": {k: run["params"][k] for k in ("feature_type", "n_neighbors",
                                                     "memory_limit", "workers", "fraction")},
            "graph": {k: run["graph"].get(k) for k in ("index", "nlist", "nprobe", "pca_dim",
                                                       "recall", "shards")}}  # fmt: skip


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def power_fit(ns: list[int], ts: list[float]) -> dict:
    """t = a·N^b through the points (log-log least squares)."""
    b, log_a = np.polyfit(np.log(ns), np.log(np.maximum(ts, 1e-6)), 1)
    return {"a": float(np.exp(log_a)), "b": round(float(b), 3)}


def linear_fit(ns: list[int], ys: list[float]) -> dict:
    """y = c0 + c1·N."""
    c1, c0 = np.polyfit(np.asarray(ns, float), np.asarray(ys, float), 1)
    return {"c0": float(c0), "per_row": float(c1)}


def extrapolate(points: list[dict]) -> dict:
    ns = [p["n"] for p in points]
    largest = max(points, key=lambda p: p["n"])
    times = {}
    common = [s for s in points[0]["seconds"] if all(s in p["seconds"] for p in points)]
    for stage in common:
        fit = power_fit(ns, [p["seconds"][stage] for p in points])
        theory = THEORY.get(stage.split(".")[0])
        at = {}
        for name, n in SCALES.items():
            at[name] = {"fitted_s": round(fit["a"] * n ** fit["b"])}
            if theory is not None:  # scaled from the largest measured point
                ratio = (n / largest["n"]) ** theory
                at[name]["theory_s"] = round(largest["seconds"][stage] * ratio)
        times[stage] = {"fit": fit, "theory_exponent": theory, "at": at}
    memory = linear_fit(ns, [p["peak_rss_bytes"] for p in points])
    disk = {k: linear_fit(ns, [p["disk_bytes"][k] for p in points])
            for k in points[0]["disk_bytes"]}  # fmt: skip
    return {"time": times, "driver_peak_rss": memory, "disk": disk,
            "edges_per_row": [round(p["edges"] / p["n"], 2) for p in points]}  # fmt: skip


def main() -> None:
    points = sorted((load(out) for out in sys.argv[1:]), key=lambda p: p["n"])
    if len(points) < 2:
        raise SystemExit("give at least two select output directories of different sizes")
    print(json.dumps({"benchmark": "fit_scaling", "runs": points, "fits": extrapolate(points),
                      "load_average_1m_now": os.getloadavg()[0]}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
