"""``d2scale mp``: message passing on a saved graph. Imports only NumPy and the engine."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from d2scale.errors import D2ScaleError


def load_scores(path: str, n: int) -> np.ndarray:
    """A 1-D float array of ``n`` finite scores from ``path`` (.npy)."""
    if not os.path.exists(path):
        raise D2ScaleError(f"scores file {path} does not exist")
    try:
        scores = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot read scores file {path}: {e}") from None
    if scores.ndim != 1 or not np.issubdtype(scores.dtype, np.number):
        raise D2ScaleError(
            f"{path} must hold a 1-D numeric array, found {scores.dtype} {scores.shape}"
        )
    if scores.shape[0] != n:
        raise D2ScaleError(f"{path} has {scores.shape[0]} scores but the graph has {n} rows")
    scores = scores.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise D2ScaleError(f"{path}: score at row {int(bad[0])} is NaN or inf")
    return scores


def run_mp(args) -> int:
    from d2scale.engine import d2_order, load_graph_arrays
    from d2scale.sinks import save_npy

    t0 = time.perf_counter()
    knn = load_graph_arrays(args.graph)
    scores = load_scores(args.scores, knn.n)
    budget = knn.n if args.budget is None else args.budget
    if not 0 <= budget <= knn.n:
        raise D2ScaleError(
            f"--budget must be between 0 and the number of rows ({knn.n}); got {budget}"
        )
    timings: dict[str, float] = {}
    result = d2_order(
        knn,
        scores,
        gamma=args.gamma,
        gamma_forward=args.gamma_forward,
        mode=args.mode,
        sampling=args.sampling,
        budget=budget,
        device=args.device,
        greedy=args.greedy,
        buckets=args.buckets,
        timings=timings,
    )
    save_npy(args.out, result.order.astype(np.int64))
    if args.forward_out:
        save_npy(args.forward_out, result.forward)
    if not args.quiet:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
        total = time.perf_counter() - t0
        print(
            f"{result.order.shape[0]:,} picks of {knn.n:,} nodes ({result.n_edges:,} edges) "
            f"in {total:.2f}s [{stages}] -> {args.out}",
            file=sys.stderr,
        )
    return 0
