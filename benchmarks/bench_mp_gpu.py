"""GPU message passing: the forward kernel and the exact round-based reverse pass.

Prints one JSON document. With a CUDA GPU (cupy) it times the kernels and, where the CPU
engine (d2scale.d2.forward / d2scale.d2.exact) is present, checks that the GPU results equal it
bit for bit and times it too. Without a GPU it says so and stops, unless
``--backend emulation``: the same kernels then run through the g++ host emulation, which
gives the round statistics (rounds, share of the order settled by rounds vs the CPU tail)
but no GPU timings.

    python benchmarks/bench_mp_gpu.py --sizes 10000 100000 1000000 --backend emulation
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import numpy as np
from common import host_info

from d2scale.backends import cuda_available
from d2scale.blas import load_faiss
from d2scale.d2 import _cuda
from d2scale.graph.symmetric import symmetrize
from d2scale.types import CsrGraph, KnnGraph

EXACT_KNN_MAX = 100_000  # above this, IVF kNN (the graph's recall does not matter here)
IVF_NLIST, IVF_NPROBE = 4096, 8
EPS = 1e-7

faiss = load_faiss()  # its OpenBLAS at the CPU's proper kernel


def clustered_points(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian clusters of ~100 points each, float32."""
    centers = rng.normal(size=(max(1, n // 100), dim))
    return (centers[rng.integers(0, len(centers), n)] + 0.3 * rng.normal(size=(n, dim))).astype(
        np.float32
    )


def knn_graph(x: np.ndarray, k: int) -> tuple[CsrGraph, str]:
    """Symmetrised kNN graph (faiss flat or IVF), self removed by identity."""
    n, dim = x.shape
    if n <= EXACT_KNN_MAX:
        index, how = faiss.IndexFlatL2(dim), "exact (faiss IndexFlatL2)"
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, IVF_NLIST)
        index.train(x[:: max(1, n // (50 * IVF_NLIST))])
        index.nprobe = IVF_NPROBE
        how = f"approximate (faiss IVF nlist {IVF_NLIST} nprobe {IVF_NPROBE})"
    index.add(x)
    d2, ids = index.search(x, k + 1)
    self_hit = ids == np.arange(n)[:, None]
    keep = np.argsort(self_hit, axis=1, kind="stable")[:, :k]  # drop self, keep order
    ids, d2 = np.take_along_axis(ids, keep, 1), np.take_along_axis(d2, keep, 1)
    dist = np.where(ids >= 0, np.sqrt(np.maximum(d2, 0)), np.inf).astype(np.float32)
    return symmetrize(KnnGraph(ids.astype(np.int64), dist)), how


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def bench_forward(csr: CsrGraph, scores: np.ndarray, backend) -> dict:
    w = np.exp(-1.0 * csr.distances.astype(np.float64))
    g, seconds = timed(_cuda.forward_scores_cuda, csr, scores, w, "sum", EPS, backend=backend)
    out = {"seconds": seconds}
    if importlib.util.find_spec("d2scale.d2.forward"):
        from d2scale.d2.forward import forward_scores

        cpu, out["seconds_cpu"] = timed(
            forward_scores, csr, scores, gamma_forward=1.0, mode="sum", eps=EPS, device="cpu"
        )
        out["bit_identical_to_cpu"] = bool(np.array_equal(g.view(np.uint64), cpu.view(np.uint64)))
    return out, g


def bench_reverse(csr: CsrGraph, g0: np.ndarray, gamma: float, fractions, backend) -> dict:
    w = np.exp(-gamma * csr.distances.astype(np.float64))
    out: dict = {"gamma": gamma, "budgets": []}
    for fraction in fractions:
        budget = int(fraction * csr.n)
        prefix, seconds = timed(_cuda.settle_prefix, csr, g0, w, budget, backend=backend)
        out["budgets"].append(
            {
                "fraction": fraction,
                "budget": budget,
                "rounds": prefix.info["rounds"],
                "settled_in_rounds": prefix.info["settled_in_rounds"],
                "picks_from_rounds": len(prefix.order),
                "picks_for_cpu_tail": budget - len(prefix.order),
                "seconds_rounds": seconds,
            }
        )
    if importlib.util.find_spec("d2scale.d2.exact"):
        from d2scale.d2.exact import greedy_continue

        stats: dict = {}
        order, out["seconds_full_order"] = timed(
            _cuda.reverse_order_cuda, csr, g0, w, csr.n, backend=backend, stats=stats
        )
        cpu, out["seconds_full_order_cpu"] = timed(
            greedy_continue, csr.indptr, csr.indices, w, g0.copy(), np.zeros(csr.n, bool), csr.n
        )
        out["full_order_identical_to_cpu"] = bool(np.array_equal(order, cpu))
        out["full_order_stats"] = stats
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--n-neighbors", type=int, default=10)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--gammas", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 0.3, 1.0])
    p.add_argument("--backend", choices=["cupy", "emulation"], default="cupy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    doc: dict = {"benchmark": "bench_mp_gpu", "host": host_info(), "args": vars(args)}
    if args.backend == "cupy" and not cuda_available():
        doc["skipped"] = "no CUDA GPU with cupy here; --backend emulation gives round stats"
        json.dump(doc, sys.stdout, indent=1)
        return 0
    if args.backend == "cupy":
        import cupy

        backend = _cuda.CupyBackend()
        doc["device"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    else:
        backend = _cuda.HostEmulation(block=256, max_grid=1024)
        doc["device"] = "host emulation (g++), timings are not GPU timings"
    rng = np.random.default_rng(args.seed)
    doc["runs"] = []
    for n in args.sizes:
        (csr, how), seconds = timed(knn_graph, clustered_points(n, args.dim, rng), args.n_neighbors)
        degree = np.diff(csr.indptr)
        run = {
            "n": n,
            "knn": how,
            "seconds_graph": seconds,
            "edges": csr.n_edges,
            "max_degree": int(degree.max()),
            "mean_degree": float(degree.mean()),
        }
        run["forward"], g0 = bench_forward(csr, rng.random(n), backend)
        run["reverse"] = [
            bench_reverse(csr, g0, gamma, args.fractions, backend) for gamma in args.gammas
        ]
        doc["runs"].append(run)
        print(f"n={n} done", file=sys.stderr)
    json.dump(doc, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
