"""Wall time of ``select_coreset`` at ImageNet size; prints one JSON document.

    python benchmarks/bench_vision_select.py [--n 1281167] [--classes 1000] [--dim 512]
        [--fraction 0.3] [--methods d2,kcenter,ccs,moderate,topk,random] [--threads 2]

Inputs are synthetic: per class a Gaussian cluster of 512-d float32 "penultimate features"
(random class centre, unit noise), forgetting counts 0–9 and normal AUMs; sizes as ImageNet-1k
(1,281,167 samples over 1,000 classes, ~1,281 per class). Each method runs in its default
mode (d2 and kcenter per class with the seed's budgets; mis-ratio auto) and reports seconds
and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import host_info  # noqa: E402


def synthetic(n: int, classes: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    targets = np.sort(rng.integers(0, classes, n))
    features = np.empty((n, dim), dtype=np.float32)
    starts = np.searchsorted(targets, np.arange(classes + 1))
    for c in range(classes):
        a, b = starts[c], starts[c + 1]
        centre = 2 * rng.standard_normal(dim, dtype=np.float32)
        features[a:b] = centre + rng.standard_normal((b - a, dim), dtype=np.float32)
    scores = {
        "targets": targets,
        "forgetting": rng.integers(0, 10, n).astype(np.float32),
        "accumulated_margin": rng.standard_normal(n, dtype=np.float32),
        "el2n": rng.random(n, dtype=np.float32),
    }
    return scores, features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--methods", default="d2,kcenter,ccs,moderate,topk,random")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    from d2scale.blas import load_faiss

    faiss = load_faiss()  # its OpenBLAS at the CPU's proper kernel
    faiss.omp_set_num_threads(args.threads)
    from d2scale.vision.coresets import CoresetParams, select_coreset

    t0 = time.perf_counter()
    scores, features = synthetic(args.n, args.classes, args.dim)
    gen_s = time.perf_counter() - t0
    results = {}
    for method in args.methods.split(","):
        params = CoresetParams(method, args.fraction, score="forgetting" if method != "topk"
                               else "el2n")  # fmt: skip
        t0 = time.perf_counter()
        core = select_coreset(params, scores, features)
        results[method] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "kept": len(core.indices),
            "mode": core.info["params"]["coreset_mode"],
            "mis_ratio": core.info["params"]["mis_ratio"],
        }
        print(f"{method}: {results[method]}", file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": "vision select_coreset",
        "n": args.n, "classes": args.classes, "dim": args.dim, "fraction": args.fraction,
        "threads": args.threads, "generate_seconds": round(gen_s, 1),
        "methods": results,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "host": host_info(),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
