"""kNN graph benchmark: exact flat search, plain faiss IVF-Flat, big_batch_search, d2scale.

    python benchmarks/bench_knn.py [--sizes 100000,1000000] [--dim 768] [--data synth|hard]

Prints ONE JSON document. Per pool size it reports recall@k (against exact search, ties
counted by distance) and wall time of:

* ``exact_flat``: faiss exact search (``faiss.knn``), timed on ``--exact-queries`` queries
  and extrapolated linearly to all N queries (stated in the JSON);
* ``ivf_flat``: faiss IndexIVFFlat (same nlist as d2scale, trained on 39·nlist rows),
  train + add + per-query search at the smallest nprobe reaching the recall target, the
  search timed on ``--ivf-queries`` queries and extrapolated;
* ``big_batch_search``: ``faiss.contrib.big_batch_search`` on that index and nprobe, run on
  min(N, ``--bbs-queries``) queries and extrapolated;
* ``d2scale``: ``build_knn_graph`` end to end in a fresh subprocess (its peak RSS is the
  memory figure), embeddings held as float16 and served as float32 blocks.

Data: CLIP-like unit vectors — ``synth`` mirrors ``d2scale.synth`` (tight latent clusters of
~150 rows, 1% exact duplicates), ``hard`` has 64 broad clusters (SPEC §4's difficulty:
nprobe 16 of 1024 lists → recall ≈ 0.99 at 200k). Data are cached as float16 .npy files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from common import host_info

LATENT = 48
EVAL_QUERIES = 1000  # rows whose recall is measured (seeded, independent of d2scale's own)


# ---------------------------------------------------------------- data


def clip_like(path: str, n: int, dim: int, kind: str, seed: int = 0) -> None:
    """Write n CLIP-like unit vectors (float16) to ``path`` in chunks."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path + ".tmp.npy", "w+", np.float16, (n, dim))
    mean = rng.standard_normal(dim)
    mean /= np.linalg.norm(mean)
    proj = np.linalg.qr(rng.standard_normal((dim, LATENT)))[0]
    if kind == "synth":  # as d2scale.synth.write_pool
        centres = rng.standard_normal((max(8, n // 150), LATENT))
        weights = rng.lognormal(0.0, 1.0, len(centres))
        weights /= weights.sum()
        spread, noise = 0.4, 0.35 / np.sqrt(dim)
    else:
        centres = rng.standard_normal((64, LATENT))
        weights = np.full(64, 1 / 64)
        spread, noise = 1.0, 0.007
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        z = centres[rng.choice(len(centres), m, p=weights)] + spread * rng.standard_normal(
            (m, LATENT)
        )
        if kind == "synth":
            x = 0.8 * mean + z @ proj.T / np.sqrt(LATENT)
        else:
            z /= np.linalg.norm(z, axis=1, keepdims=True)
            x = 0.8 * mean + z @ proj.T
        x += noise * rng.standard_normal((m, dim))
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    if kind == "synth":  # 1% exact duplicates of earlier rows
        picks = rng.choice(np.arange(1, n), n // 100, replace=False)
        out[picks] = out[(rng.random(picks.size) * picks).astype(int)]
    out.flush()
    del out
    os.replace(path + ".tmp.npy", path)


@dataclass
class Float16Blocks:
    """EmbeddingBlocks over a float16 array (memory-mapped): float32 blocks on load."""

    path: str
    block_rows: int = 65536

    def __post_init__(self) -> None:
        arr = np.load(self.path, mmap_mode="r")
        n = arr.shape[0]
        self.sizes = [min(self.block_rows, n - s) for s in range(0, n, self.block_rows)]
        self.dim = int(arr.shape[1])

    def load(self, i: int) -> np.ndarray:
        arr = np.load(self.path, mmap_mode="r")
        start = i * self.block_rows
        return np.asarray(arr[start : start + self.sizes[i]], dtype=np.float32)


# ---------------------------------------------------------------- d2scale (child process)


def child(args: dict) -> None:
    from d2scale.graph import build_knn_graph

    blocks = Float16Blocks(args["data"])
    t0 = time.perf_counter()
    graph, info = build_knn_graph(
        blocks, n_neighbors=args["k"], recall=args["recall"], seed=0,
        progress=lambda m: print(f"[{time.perf_counter() - t0:7.1f}s] {m}", file=sys.stderr),
    )  # fmt: skip
    wall = time.perf_counter() - t0
    np.save(args["out"], graph.neighbors)
    info["wall_s"] = round(wall, 2)
    info["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(info))


def run_d2scale(data: str, k: int, recall: float, workdir: str) -> tuple[dict, np.ndarray]:
    out = os.path.join(workdir, "d2scale-neighbors.npy")
    arg = json.dumps({"data": data, "k": k, "recall": recall, "out": out})
    proc = subprocess.run(
        [sys.executable, __file__, "--child", arg], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"d2scale child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out)


# ---------------------------------------------------------------- faiss baselines


def recall_with_ties(x: np.ndarray, q: np.ndarray, found: np.ndarray, kth: np.ndarray) -> float:
    """Share of found neighbours (self excluded, at most k per row) within each query's true
    k-th distance: exact ties (duplicates) count whichever of them was found."""
    k, hits = K[0], 0
    for row, f, dk in zip(q, found, kth, strict=True):
        f = f[(f >= 0) & (f != row)][:k]
        d = np.linalg.norm(x[f].astype(np.float64) - x[row].astype(np.float64), axis=1)
        hits += int((d <= dk * (1 + 1e-6) + 1e-9).sum())
    return hits / (k * len(q))


def exact_truth(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """faiss exact search of the queries; returns the exact k-th neighbour distance of each."""
    import faiss

    t0 = time.perf_counter()
    _, ids = faiss.knn(x[q], x, k + 1)
    dt = time.perf_counter() - t0
    kth = np.empty(len(q))
    for i, (row, f) in enumerate(zip(q, ids, strict=True)):
        f = f[f != row][:k]
        kth[i] = np.linalg.norm(x[f[-1]].astype(np.float64) - x[row].astype(np.float64))
    return kth, dt


def faiss_ivf(x, q, kth, k, nlist, target, n_ivf, n_bbs) -> dict:
    import faiss
    from faiss.contrib.big_batch_search import big_batch_search

    n, d = x.shape
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist)
    index.cp.niter = 10
    index.train(x[np.sort(rng.choice(n, min(n, 39 * nlist), replace=False))])
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.add(x)
    t_add = time.perf_counter() - t0
    curve = {}
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
        index.nprobe = nprobe
        _, ids = index.search(x[q], k + 1)
        curve[nprobe] = recall_with_ties(x, q, ids, kth)
        if curve[nprobe] >= target:
            break
    index.nprobe = nprobe
    sub = rng.choice(n, min(n, n_ivf), replace=False)
    t0 = time.perf_counter()
    index.search(x[sub], k + 1)
    per_query = (time.perf_counter() - t0) / len(sub)
    rows = np.arange(min(n, n_bbs))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # big_batch_search prints at verbose=0
        big_batch_search(index, x[rows], k + 1)
    t_bbs = (time.perf_counter() - t0) * n / len(rows)
    return {
        "ivf_flat": {
            "nlist": nlist, "nprobe": nprobe, "recall": round(curve[nprobe], 4),
            "recall_curve": {str(p): round(r, 4) for p, r in curve.items()},
            "train_s": round(t_train, 2), "add_s": round(t_add, 2),
            "search_s": round(per_query * n, 2), "queries_timed": len(sub),
            "wall_s": round(t_train + t_add + per_query * n, 2),
            "note": f"search timed on {len(sub)} queries, extrapolated to {n}",
        },
        "big_batch_search": {
            "nlist": nlist, "nprobe": nprobe, "recall": round(curve[nprobe], 4),
            "search_s": round(t_bbs, 2), "wall_s": round(t_train + t_add + t_bbs, 2),
            "note": f"run on {len(rows)} queries, extrapolated to {n}; same index and nprobe "
            "(same candidates as per-query search, so the same recall)",
        },
    }  # fmt: skip


# ---------------------------------------------------------------- main


K = [10]  # k of the run (set from --k)


def bench_size(n: int, args, workdir: str) -> dict:
    from d2scale.graph.ivf import choose_nlist

    data = os.path.join(workdir, f"{args.data}-{n}-{args.dim}.npy")
    t0 = time.perf_counter()
    if not os.path.exists(data):
        clip_like(data, n, args.dim, args.data)
    t_data = time.perf_counter() - t0
    info, neighbors = run_d2scale(data, args.k, args.recall, workdir)
    x = np.load(data).astype(np.float32)
    q = np.sort(np.random.default_rng(12345).choice(n, min(n, EVAL_QUERIES), replace=False))
    kth, t_exact_q = exact_truth(x, q, args.k)
    t_exact = t_exact_q * n / len(q)
    d2_recall = recall_with_ties(x, q, neighbors[q], kth)
    base = faiss_ivf(x, q, kth, args.k, choose_nlist(n), args.recall, args.ivf_queries,
                     args.bbs_queries)  # fmt: skip
    f16_bytes = n * args.dim * 2
    pca = info.get("pca_dim") or 0
    index_bytes = n * (args.dim * 4 + pca * 4 + 8)
    d2 = {
        "wall_s": info["wall_s"], "recall": round(d2_recall, 4),
        "recall_self_reported": info.get("recall"), "recall_se": info.get("recall_se"),
        "index": info["index"], "nlist": info.get("nlist"), "nprobe": info.get("nprobe"),
        "candidates": info.get("candidates"), "pca_dim": info.get("pca_dim"),
        "timings": info["timings"], "peak_rss_gib": round(info["peak_rss_bytes"] / 2**30, 2),
        "float16_embedding_gib": round(f16_bytes / 2**30, 2),
        "index_gib": round(index_bytes / 2**30, 2),
        "memory_ratio": round(info["peak_rss_bytes"] / (f16_bytes + index_bytes), 2),
    }  # fmt: skip
    return {
        "n": n, "dim": args.dim, "k": args.k, "data": args.data,
        "data_generation_s": round(t_data, 1),
        "exact_flat": {
            "recall": 1.0, "wall_s": round(t_exact, 1), "queries_timed": len(q),
            "note": f"faiss.knn on {len(q)} queries, extrapolated linearly to {n}",
        },
        **base,
        "d2scale": d2,
        "speedup_vs_exact": round(t_exact / info["wall_s"], 1),
        "speedup_vs_ivf_flat": round(base["ivf_flat"]["wall_s"] / info["wall_s"], 2),
        "speedup_vs_big_batch_search": round(
            base["big_batch_search"]["wall_s"] / info["wall_s"], 2
        ),
    }  # fmt: skip


def versions() -> dict:
    import dask
    import faiss
    import numba

    return {"faiss": faiss.__version__, "numpy": np.__version__, "numba": numba.__version__,
            "dask": dask.__version__}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--k", type=int, default=K[0])
    p.add_argument("--recall", type=float, default=0.95)
    p.add_argument("--data", choices=("synth", "hard"), default="synth")
    p.add_argument("--ivf-queries", type=int, default=20000)
    p.add_argument("--bbs-queries", type=int, default=200000)
    p.add_argument("--workdir", help="cache for generated data (default: a temporary dir)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    K[0] = args.k
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-knn-")
    os.makedirs(workdir, exist_ok=True)
    results = [bench_size(int(s), args, workdir) for s in args.sizes.split(",")]
    print(json.dumps({
        "benchmark": "knn_graph", "host": host_info(), "versions": versions(),
        "params": {"k": args.k, "recall_target": args.recall, "dim": args.dim, "data": args.data},
        "results": results,
        "peak_rss_gib_benchmark_process": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
