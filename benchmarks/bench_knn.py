"""kNN graph benchmark: d2scale vs faiss big_batch_search, NN-descent and exact search.

    python benchmarks/bench_knn.py --data real --sizes 100000 --repeat 3   # real text embeddings
    python benchmarks/bench_knn.py --data hard --sizes 200000 --repeat 3   # CLIP-like synthetic

Prints ONE JSON document; every method runs in this one invocation, one after the other, on
the same data, with the load average before each (the machine may be shared). ``--repeat R``
runs the timed methods round robin R times and reports each one's median round (and every
round's wall time, and d2scale's speed-up round by round): on a shared machine whose speed
drifts by ±20% over minutes, only runs interleaved like this compare fairly. Per pool it
reports recall@k of ``--eval-queries`` seeded rows (against exact search; a neighbour as
close as the true k-th counts, so exact-duplicate ties count whichever copy was found) and
wall time of:

* ``d2scale``: ``build_knn_graph`` end to end (its own Dask cluster included) in a fresh
  subprocess, embeddings memory-mapped as float16 and served as float32 blocks; its peak RSS
  is the memory figure. ``wall_s``/``cpu_s`` are timed *warm*, by the rule pynndescent is
  timed by: after an untimed build of the pool's first 20,000 rows in the same process
  (imports, numba's cached kernels loaded). ``d2scale_cold`` is the same build as the first
  thing a fresh process does (``--no-cold`` skips it); numba's on-disk cache is filled
  beforehand by a small run, so neither includes compilation;
* ``big_batch_search``: ``faiss.contrib.big_batch_search`` (``threaded=1``, faiss on every
  core) over ALL rows of an IVF-Flat index, for each ``--bbs-nlists`` factor of d2scale's
  nlist, nprobe tuned (untimed) on the evaluation rows to the smallest value reaching the
  recall target; the wall time is train + add + search;
* ``pynndescent``: ``NNDescent`` (``n_jobs`` = cores, ``n_neighbors`` = 2k), timed warm
  (numba compilation done on a small run first);
* ``exact_flat``: ``faiss.knn`` on the evaluation rows, extrapolated linearly to all N.

Data: ``real`` = all-MiniLM-L6-v2 embeddings of real text with web-like duplicates
(``benchmarks/real_pool.py``, built and cached on first use); ``synth`` mirrors
``d2scale.pool.synth`` (tight latent clusters of ~150 rows, 1% exact duplicates); ``hard`` has 64
broad clusters (SPEC §4). Synthetic data are cached as float16 ``.npy`` files in
``--workdir``.
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

from d2scale.blas import blas_kernels, load_faiss
from d2scale.pool.halfprec import to_float32

LATENT = 48
EVAL_QUERIES = 1000  # rows whose recall is measured (seeded, independent of d2scale's own)
TRUTH_CHUNK = 65536  # rows per exact-search chunk
WARM_ROWS = 20000  # rows of the untimed warm-up build before d2scale's timed one


# ---------------------------------------------------------------- data


def clip_like(path: str, n: int, dim: int, kind: str, seed: int = 0) -> None:
    """Write n CLIP-like unit vectors (float16) to ``path`` in chunks."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path + ".tmp.npy", "w+", np.float16, (n, dim))
    mean = rng.standard_normal(dim)
    mean /= np.linalg.norm(mean)
    proj = np.linalg.qr(rng.standard_normal((dim, LATENT)))[0]
    if kind == "synth":  # as d2scale.pool.synth.write_pool
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
    block_rows: int = 16384  # partitions of ~16k rows, like web-data shards (~10k samples)
    rows: int | None = None  # only the first rows (default: all)

    def __post_init__(self) -> None:
        arr = np.load(self.path, mmap_mode="r")
        n = arr.shape[0] if self.rows is None else min(self.rows, arr.shape[0])
        self.sizes = [min(self.block_rows, n - s) for s in range(0, n, self.block_rows)]
        self.dim = int(arr.shape[1])

    def load(self, i: int) -> np.ndarray:
        arr = np.load(self.path, mmap_mode="r")
        start = i * self.block_rows
        return to_float32(arr[start : start + self.sizes[i]])

    def iter_chunks(self, i: int, rows: int):
        """(first row, float32 rows) of block ``i``, ``rows`` at a time (as d2scale's sources)."""
        arr, start = np.load(self.path, mmap_mode="r"), i * self.block_rows
        for a in range(0, self.sizes[i], rows):
            b = min(self.sizes[i], a + rows)
            yield a, to_float32(arr[start + a : start + b])

    def iter_rows(self, i: int, local: np.ndarray, rows: int):
        """(a, b, float32 rows local[a:b]) of block ``i``: only the wanted rows are read and
        converted, as d2scale's own pool source does."""
        arr, start = np.load(self.path, mmap_mode="r"), i * self.block_rows
        for a in range(0, local.size, rows):
            b = min(local.size, a + rows)
            yield a, b, to_float32(arr[start + local[a:b]])


# ---------------------------------------------------------------- d2scale (child process)


def child(args: dict) -> None:
    """One timed build in this (fresh) process; with ``warm_rows``, after an untimed build
    of that many leading rows of the same pool (same code paths: imports, Dask and numba's
    cached kernels loaded — as pynndescent is timed after its compilation run)."""
    from d2scale.graph import build_knn_graph

    def build(blocks, progress=None):
        return build_knn_graph(
            blocks,
            n_neighbors=args["k"],
            recall=args["recall"],
            seed=0,
            memory_limit=args.get("memory_limit"),
            progress=progress,
            graph_engine=args.get("engine", "compiled"),
        )

    if args.get("warm_rows"):
        build(Float16Blocks(args["data"], rows=args["warm_rows"]))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    graph, info = build(
        Float16Blocks(args["data"]),
        lambda m: print(f"[{time.perf_counter() - t0:7.1f}s] {m}", file=sys.stderr),
    )
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    np.save(args["out"], graph.neighbors)
    info["wall_s"] = round(wall, 2)
    info["cpu_s"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)
    print(json.dumps(info))


def run_d2scale(
    data: str,
    k: int,
    recall: float,
    workdir: str,
    limit=None,
    warm_rows: int = 0,
    engine: str = "compiled",
) -> tuple[dict, np.ndarray]:
    """The build facts of a fresh child process (``wall_s``, ``cpu_s``: its user + system
    time during the timed build; ``warm_rows``: warmed first, see :func:`child`) and its
    neighbours."""
    out = os.path.join(workdir, "d2scale-neighbors.npy")
    arg = json.dumps({"data": data, "k": k, "recall": recall, "out": out, "memory_limit": limit,
                      "warm_rows": warm_rows, "engine": engine})  # fmt: skip
    proc = subprocess.run(
        [sys.executable, __file__, "--child", arg], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"d2scale child failed:\n{proc.stderr[-4000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info, np.load(out)


# ---------------------------------------------------------------- recall and exact search


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
    """faiss exact search of the queries; returns the exact k-th neighbour distance of each.
    ``x`` may be a float16 memory map: it is searched in float32 chunks (memory stays small
    for large pools)."""
    faiss = load_faiss()  # its OpenBLAS at the CPU's proper kernel

    xq = np.asarray(x[q], dtype=np.float32)
    t0 = time.perf_counter()
    found_d, found_i = [], []
    for s in range(0, x.shape[0], TRUTH_CHUNK):
        d, i = faiss.knn(xq, np.asarray(x[s : s + TRUTH_CHUNK], dtype=np.float32), k + 1)
        found_d.append(d)
        found_i.append(i + s)
    dist, ids = np.concatenate(found_d, axis=1), np.concatenate(found_i, axis=1)
    order = np.argsort(dist, axis=1, kind="stable")[:, : k + 1]
    ids = np.take_along_axis(ids, order, axis=1)
    dt = time.perf_counter() - t0
    kth = np.empty(len(q))
    for i, (row, f) in enumerate(zip(q, ids, strict=True)):
        f = f[f != row][:k]
        kth[i] = np.linalg.norm(x[f[-1]].astype(np.float64) - x[row].astype(np.float64))
    return kth, dt


# ---------------------------------------------------------------- baselines


def ivf_flat(x, nlist):
    """faiss IVF-Flat over all rows (k-means on a seeded sample of 39 rows per list)."""
    faiss = load_faiss()  # its OpenBLAS at the CPU's proper kernel

    n, d = x.shape
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.cp.niter = 10
    index.train(x[np.sort(np.random.default_rng(1).choice(n, min(n, 39 * nlist), replace=False))])
    index.add(x)
    return index


def tune_big_batch(x, q, kth, k, nlist, target) -> dict:
    """Untimed: the smallest nprobe whose recall on the evaluation rows reaches ``target``
    (doubling, then bisection), with the recall curve."""
    index = ivf_flat(x, nlist)
    curve, nprobe = {}, 1
    while True:
        index.nprobe = nprobe
        curve[nprobe] = recall_with_ties(x, q, index.search(x[q], k + 1)[1], kth)
        if curve[nprobe] >= target or nprobe >= nlist:
            break
        nprobe = min(nlist, 2 * nprobe)
    lo = max([p for p in curve if curve[p] < target], default=0)
    while nprobe - lo > max(1, nprobe // 8):
        mid = (lo + nprobe) // 2
        index.nprobe = mid
        curve[mid] = recall_with_ties(x, q, index.search(x[q], k + 1)[1], kth)
        lo, nprobe = (lo, mid) if curve[mid] >= target else (mid, nprobe)
    return {"nlist": nlist, "nprobe": nprobe,
            "recall_curve": {str(p): round(r, 4) for p, r in sorted(curve.items())}}  # fmt: skip


def big_batch(x, q, kth, k, nlist, nprobe) -> dict:
    """Timed: IVF-Flat train + add, then ``big_batch_search`` of all rows at ``nprobe``."""
    from faiss.contrib.big_batch_search import big_batch_search

    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    index = ivf_flat(x, nlist)
    t_build, c_build = time.perf_counter() - t0, time.process_time() - c0
    index.nprobe = nprobe
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # big_batch_search prints at verbose=0
        _, ids = big_batch_search(index, x, k + 1, threaded=1)
    t_search, c_search = time.perf_counter() - t0, time.process_time() - c0
    return {
        "recall": round(recall_with_ties(x, q, ids[q], kth), 4),
        "train_add_s": round(t_build, 2), "search_s": round(t_search, 2),
        "wall_s": round(t_build + t_search, 2), "cpu_s": round(c_build + c_search, 1),
        "load_before": round(load, 2),
    }  # fmt: skip


def nn_descent(x, q, kth, k) -> dict:
    """pynndescent's NN-descent graph, timed warm (compiled on a small run first)."""
    try:
        from pynndescent import NNDescent
    except ImportError:
        return {"skipped": "pynndescent is not installed"}
    jobs = len(os.sched_getaffinity(0))
    NNDescent(x[:5000], n_neighbors=2 * k, n_jobs=jobs, random_state=0)  # compile (once)
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    nnd = NNDescent(x, n_neighbors=2 * k, n_jobs=jobs, random_state=0)
    ids, _ = nnd.neighbor_graph
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    recall = round(recall_with_ties(x, q, ids[q], kth), 4)
    return {"n_neighbors": 2 * k, "recall": recall, "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 1), "load_before": round(load, 2)}  # fmt: skip


# ---------------------------------------------------------------- main


K = [10]  # k of the run (set from --k)


def data_path(n: int, args, workdir: str) -> str:
    if args.data == "real":
        from real_pool import real_pool

        return real_pool(n, progress=lambda m: print(m, file=sys.stderr))
    path = os.path.join(workdir, f"{args.data}-{n}-{args.dim}.npy")
    if not os.path.exists(path):
        clip_like(path, n, args.dim, args.data)
    return path


def bench_size(n: int, args, workdir: str) -> dict:
    """Every method on one pool; with ``--repeat R`` the timed runs go round robin R times
    (d2scale, each big_batch_search, pynndescent, then again), so a machine whose speed
    drifts slows all of them alike; each method's figures are the median round's."""
    data = data_path(n, args, workdir)
    x = np.load(data, mmap_mode="r")  # float16; the in-memory baselines get a float32 copy
    k = args.k
    q = np.sort(np.random.default_rng(12345).choice(n, min(n, args.eval_queries), replace=False))
    kth, t_exact_q = exact_truth(x, q, k)
    out = {"n": n, "dim": int(x.shape[1]), "k": k, "data": args.data, "rounds": args.repeat,
           "exact_flat": {"wall_s": round(t_exact_q * n / len(q), 1),
                          "note": f"faiss.knn on {len(q)} rows, extrapolated to {n}"}}  # fmt: skip
    methods = args.methods.split(",")
    runs: dict[str, list[dict]] = {}
    if "d2scale" in methods and args.cold:
        load = os.getloadavg()[0]
        info, _ = run_d2scale(data, k, args.recall, workdir, args.memory_limit,
                              engine=args.graph_engine)  # fmt: skip
        out["d2scale_cold"] = {"wall_s": info["wall_s"], "cpu_s": info["cpu_s"],
                               "load_before": round(load, 2),
                               "note": "first build of a fresh process"}  # fmt: skip
    tuned = None
    for _ in range(args.repeat):
        if "d2scale" in methods:
            load = os.getloadavg()[0]
            info, neighbors = run_d2scale(data, k, args.recall, workdir, args.memory_limit,
                                          warm_rows=min(WARM_ROWS, n // 4),
                                          engine=args.graph_engine)  # fmt: skip
            info["recall_measured"] = round(recall_with_ties(x, q, neighbors[q], kth), 4)
            runs.setdefault("d2scale", []).append({**info, "load_before": round(load, 2)})
        if tuned is None and ("big_batch_search" in methods or "pynndescent" in methods):
            x = np.asarray(x, dtype=np.float32)
            nlist = (runs.get("d2scale") or [{}])[0].get("nlist") or _nlist(n)
            tuned = [tune_big_batch(x, q, kth, k, max(1, int(f * nlist)), args.recall)
                     for f in map(float, args.bbs_nlists.split(","))] \
                if "big_batch_search" in methods else []  # fmt: skip
        for i, t in enumerate(tuned or []):
            runs.setdefault(f"bbs{i}", []).append(big_batch(x, q, kth, k, t["nlist"], t["nprobe"]))
        if "pynndescent" in methods:
            runs.setdefault("pynndescent", []).append(nn_descent(x, q, kth, k))
    if "d2scale" in runs:
        info = _median_run(runs["d2scale"])
        out["d2scale"] = {
            "wall_s": info["wall_s"], "cpu_s": info["cpu_s"],
            "wall_s_rounds": [r["wall_s"] for r in runs["d2scale"]],
            "recall": info["recall_measured"],
            "recall_self_reported": info.get("recall"), "recall_se": info.get("recall_se"),
            "index": info["index"], "nlist": info.get("nlist"), "nprobe": info.get("nprobe"),
            "probing": info.get("probing"), "candidates": info.get("candidates"),
            "pca_dim": info.get("pca_dim"), "shards": info.get("shards"),
            "graph_engine": info.get("graph_engine"), "device": info.get("device"),
            "unique_rows": info.get("unique_rows"), "timings": info["timings"],
            "peak_rss_gib": round(info["peak_rss_bytes"] / 2**30, 2),
            "float16_embedding_gib": round(n * x.shape[1] * 2 / 2**30, 2),
            "load_before": info["load_before"],
            "note": "warm: after an untimed build of the first rows in the same process",
        }  # fmt: skip
    if tuned:
        out["big_batch_search"] = [
            {**t, **_median_run(runs[f"bbs{i}"]),
             "wall_s_rounds": [r["wall_s"] for r in runs[f"bbs{i}"]],
             "note": "all N queries, threaded=1, faiss OpenMP on every core; "
                     "nprobe tuning untimed"}
            for i, t in enumerate(tuned)
        ]  # fmt: skip
    if "pynndescent" in runs:
        out["pynndescent"] = _median_run(runs["pynndescent"])
        if "wall_s" in out["pynndescent"]:
            out["pynndescent"]["wall_s_rounds"] = [r["wall_s"] for r in runs["pynndescent"]]
    if "d2scale" in out:
        wall, cpu = out["d2scale"]["wall_s"], out["d2scale"]["cpu_s"]
        ok = [b for b in out.get("big_batch_search", []) if b["recall"] >= args.recall]
        if ok:
            out["speedup_vs_best_big_batch_search"] = round(min(b["wall_s"] for b in ok) / wall, 2)
            out["cpu_ratio_vs_best_big_batch_search"] = round(min(b["cpu_s"] for b in ok) / cpu, 2)
            best = min(range(len(ok)), key=lambda i: ok[i]["wall_s"])
            out["speedup_vs_best_big_batch_search_by_round"] = [
                round(b / d, 2)
                for b, d in zip(ok[best]["wall_s_rounds"], out["d2scale"]["wall_s_rounds"],
                                strict=True)
            ]  # fmt: skip
        if "wall_s" in out.get("pynndescent", {}):
            out["speedup_vs_pynndescent"] = round(out["pynndescent"]["wall_s"] / wall, 2)
            out["cpu_ratio_vs_pynndescent"] = round(out["pynndescent"]["cpu_s"] / cpu, 2)
        out["speedup_vs_exact"] = round(out["exact_flat"]["wall_s"] / wall, 1)
    return out


def _median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the lower middle one of an even number)."""
    timed = [r for r in runs if "wall_s" in r]
    if not timed:
        return runs[0]
    return sorted(timed, key=lambda r: r["wall_s"])[(len(timed) - 1) // 2]


def _nlist(n: int) -> int:
    from d2scale.graph.ivf import choose_nlist

    return choose_nlist(n)


def warm_up(workdir: str, k: int) -> None:
    """Compile (and cache) d2scale's kernels on a small pool, so timings are warm."""
    path = os.path.join(workdir, "warmup-20000-64.npy")
    if not os.path.exists(path):
        clip_like(path, 20000, 64, "synth")
    run_d2scale(path, k, 0.9, workdir)


def versions() -> dict:
    import dask

    faiss = load_faiss()  # its OpenBLAS at the CPU's proper kernel
    import numba

    out = {"faiss": faiss.__version__, "numpy": np.__version__, "numba": numba.__version__,
           "dask": dask.__version__}  # fmt: skip
    with contextlib.suppress(ImportError):
        from importlib.metadata import version

        import pynndescent  # noqa: F401

        out["pynndescent"] = version("pynndescent")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="200000")
    p.add_argument("--dim", type=int, default=768, help="synthetic data only (real: 384)")
    p.add_argument("--k", type=int, default=K[0])
    p.add_argument("--recall", type=float, default=0.95)
    p.add_argument("--data", choices=("synth", "hard", "real"), default="hard")
    p.add_argument("--methods", default="d2scale,big_batch_search,pynndescent")
    p.add_argument("--bbs-nlists", default="0.5,1,2", help="factors of d2scale's nlist")
    p.add_argument("--eval-queries", type=int, default=1000)
    p.add_argument("--memory-limit", type=int, help="d2scale's memory_limit (bytes)")
    p.add_argument(
        "--graph-engine",
        default="compiled",
        choices=("compiled", "torch", "auto"),
        help="d2scale's engine (torch: on CUDA where torch sees a GPU)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="timed rounds, round robin over the methods (each method's median reported)",
    )
    p.add_argument(
        "--no-cold",
        dest="cold",
        action="store_false",
        help="skip d2scale's cold run (a fresh process, no warm-up build)",
    )
    p.add_argument("--workdir", help="cache for generated data (default: a temporary dir)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    K[0] = args.k
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-knn-")
    os.makedirs(workdir, exist_ok=True)
    if "d2scale" in args.methods:
        warm_up(workdir, args.k)
    results = [bench_size(int(s), args, workdir) for s in args.sizes.split(",")]
    print(json.dumps({
        "benchmark": "knn_graph", "host": host_info(), "versions": versions(),
        "blas": blas_kernels(),
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "params": {"k": args.k, "recall_target": args.recall, "data": args.data},
        "results": results,
        "peak_rss_gib_benchmark_process": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
