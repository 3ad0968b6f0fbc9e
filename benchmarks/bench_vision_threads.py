"""Wall time and accuracy of ``d2scale vision train`` per torch thread count; prints one JSON
document. It backs the default of ``--threads`` (``d2scale/vision/defaults.py``).

    python benchmarks/bench_vision_threads.py [--dataset digits] [--epochs 30]
        [--threads 1,2] [--repeat 3]

Each repeat runs every thread count once, in turn (round robin, so load drifts hit all
counts alike), as a fresh ``d2scale vision train`` process with ``--seed 0``; the report
gives per count the median seconds, every run's seconds and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import D2SCALE, host_info  # noqa: E402


def run_once(dataset: str, epochs: int, threads: int, out: str) -> dict:
    argv = [*D2SCALE, "vision", "train", "--dataset", dataset]
    argv += ["--epochs", str(epochs), "--threads", str(threads), "--quiet", "--out", out]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    seconds = time.perf_counter() - t0
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    return {"seconds": round(seconds, 2), "train_seconds": m["seconds"],
            "test_accuracy": m["test_accuracy"], "threads_recorded": m["threads"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    runs: dict[int, list[dict]] = {t: [] for t in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for t in counts:
                runs[t].append(run_once(args.dataset, args.epochs, t, f"{tmp}/{r}-{t}"))
    report = {
        "benchmark": "vision_threads",
        "dataset": args.dataset,
        "epochs": args.epochs,
        "host": host_info(),
        "by_threads": {
            str(t): {
                "median_train_seconds": statistics.median(x["train_seconds"] for x in rs),
                "runs": rs,
            }
            for t, rs in runs.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
