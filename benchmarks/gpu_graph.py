"""The steps of ``benchmarks/gpu_check.sh``: kNN graphs and message passing on a GPU.

Each step prints one JSON object (``merge`` joins them into one document). Data are
synthetic CLIP-like unit vectors generated on the device with a seeded generator (the same
rows for the same arguments on the same device), kept as float32 on the host.

    python benchmarks/gpu_graph.py equal --rows 50000
    python benchmarks/gpu_graph.py graph --rows 1000000 --exact --save /tmp/gc/1m
    python benchmarks/gpu_graph.py graph --rows 12800000 --save /tmp/gc/12m
    python benchmarks/gpu_graph.py cpu-engine --data /tmp/gc/1m
    python benchmarks/gpu_graph.py mp --data /tmp/gc/12m
    python benchmarks/gpu_graph.py select --rows 4000000 --save /tmp/gc/select
    python benchmarks/gpu_graph.py merge OUT/*.json > OUT/gpu_check.json

``equal``: the torch engine's exact graph on the GPU against the same code on the CPU and
the compiled engine (identical ids and distance bits?). ``graph``: the torch engine's IVF
graph (and with ``--exact`` its exact graph, the truth of every row's recall, itself checked
on ``--recall-rows`` rows against a float64 brute-force search), time, stages, host and
device memory; recall against the exact graph, else on ``--recall-rows`` seeded rows against
the brute-force search. ``cpu-engine``: the compiled engine's graph of the saved rows on this
machine's cores (needs faiss and Dask), its recall against the saved exact graph. ``mp``: D2
message passing (forward and reverse, 30% budget) on the saved graph with ``--mp-devices``.
``select``: ``d2scale synth`` then ``d2scale select`` end to end with the torch engine (needs
Dask). ``--device cpu`` runs any step on the CPU (the tests run them so, at a tiny size).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import D2SCALE, host_info  # noqa: E402

LATENT = 48
K = 10


def synthetic(n: int, dim: int, seed: int, device: str) -> np.ndarray:
    """CLIP-like float32 unit vectors (as ``d2scale.pool.synth``: tight latent clusters of ~150
    rows, a shared mean, noise), generated on ``device`` a block at a time."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    latent = min(LATENT, dim)
    mean = torch.randn(dim, generator=gen, device=device)
    mean /= mean.norm()
    proj = torch.linalg.qr(torch.randn(dim, latent, generator=gen, device=device))[0]
    centres = torch.randn(max(8, n // 150), latent, generator=gen, device=device)
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 1 << 20):
        m = min(n, a + (1 << 20)) - a
        pick = torch.randint(0, centres.shape[0], (m,), generator=gen, device=device)
        z = centres[pick] + 0.4 * torch.randn(m, latent, generator=gen, device=device)
        x = mean + z @ proj.T / latent**0.5
        x += 0.35 / dim**0.5 * torch.randn(m, dim, generator=gen, device=device)
        out[a : a + m] = (x / x.norm(dim=1, keepdim=True)).cpu().numpy()
    return out


def recall_against(graph, truth) -> float:
    """Recall@k over all rows: a neighbour counts when it is as close as the true k-th
    (exact duplicates of a neighbour then count whichever copy was found)."""
    kth = truth.distances[:, -1:].astype(np.float64)
    hits = (graph.distances.astype(np.float64) <= kth * (1 + 1e-6)) & (graph.neighbors >= 0)
    return float(hits.sum(axis=1).clip(max=graph.k).mean() / graph.k)


def sampled_recall(x: np.ndarray, graph, rows: int, device: str, seed: int) -> dict:
    """Recall@k of ``rows`` seeded rows against a brute-force float32 search on the device
    (a neighbour counts when it is within the true k-th distance, +1e-4 relative)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    pick = np.sort(np.random.default_rng(seed).choice(x.shape[0], rows, replace=False))
    q = torch.from_numpy(x[pick]).to(device).double()
    best = torch.full((rows, K + 1), float("inf"), dtype=torch.float64, device=device)
    for a in range(0, x.shape[0], 1 << 18):  # float64 blocks of 1.6 GB, distances 4 GB
        b = torch.from_numpy(x[a : a + (1 << 18)]).to(device).double()
        d2 = (q * q).sum(1, keepdim=True) + (b * b).sum(1) - 2 * q @ b.T
        best = torch.topk(torch.cat([best, d2], 1), K + 1, dim=1, largest=False).values
    kth = best[:, K].clamp(min=0).sqrt().cpu().numpy()  # the k-th other row (self is first)
    found = graph.distances[pick].astype(np.float64) <= kth[:, None] * (1 + 1e-4) + 1e-7
    return {"recall": float(found.sum(1).clip(max=K).mean() / K), "recall_rows": rows}


def build(x, engine: str, device: str, index: str, limit: int):
    from d2scale.graph import build_knn_graph
    from d2scale.types import ArrayBlocks

    t0 = time.perf_counter()
    blocks = ArrayBlocks(x, 1 << 20)
    graph, info = build_knn_graph(blocks, n_neighbors=K, index=index, graph_engine=engine,
                                  device=device, memory_limit=limit)  # fmt: skip
    wall = time.perf_counter() - t0
    keep = (
        "graph_engine",
        "device",
        "device_name",
        "precision",
        "index",
        "nlist",
        "nprobe",
        "recall",
        "recall_se",
        "recall_reached",
        "shards",
        "unique_rows",
        "rows_searched_again",
        "peak_device_bytes",
        "peak_rss_bytes",
        "timings",
    )
    return graph, {"wall_s": round(wall, 3), **{k: info[k] for k in keep if k in info}}


def save(path: str, x: np.ndarray | None, graph, name: str) -> None:
    os.makedirs(path, exist_ok=True)
    if x is not None:
        np.save(os.path.join(path, "x.npy"), x)
    np.save(os.path.join(path, f"{name}-neighbors.npy"), graph.neighbors)
    np.save(os.path.join(path, f"{name}-distances.npy"), graph.distances)


def load(path: str, name: str):
    from d2scale.types import KnnGraph

    nbr = np.load(os.path.join(path, f"{name}-neighbors.npy"))
    return KnnGraph(nbr, np.load(os.path.join(path, f"{name}-distances.npy")))


def memory_limit() -> int:
    import psutil

    return int(0.8 * psutil.virtual_memory().total)


def step_graph(args) -> dict:
    t0 = time.perf_counter()
    x = synthetic(args.rows, args.dim, args.seed, args.device)
    doc: dict = {
        "rows": args.rows,
        "dim": args.dim,
        "k": K,
        "data_s": round(time.perf_counter() - t0, 3),
    }
    limit = memory_limit()
    exact = None
    if args.exact:
        exact, doc["exact"] = build(x, "torch", args.device, "exact", limit)
    ivf, doc["ivf"] = build(x, "torch", args.device, "ivf", limit)
    if exact is not None:  # a check of its certificates on this device: 1.0 or a bug
        doc["exact"] |= sampled_recall(x, exact, min(args.recall_rows, args.rows), args.device, 2)
        doc["ivf"]["recall_all_rows"] = round(recall_against(ivf, exact), 5)
    else:
        doc["ivf"] |= sampled_recall(x, ivf, min(args.recall_rows, args.rows), args.device, 1)
    if args.save:
        save(args.save, x if args.exact else None, exact if exact is not None else ivf,
             "exact" if exact is not None else "ivf")  # fmt: skip
        if exact is not None:
            save(args.save, None, ivf, "ivf")
    return doc


def step_cpu_engine(args) -> dict:
    missing = [m for m in ("faiss", "distributed") if _absent(m)]
    if missing:
        return {"skipped": f"the compiled engine needs {' and '.join(missing)}: carry their "
                "wheels (benchmarks/gpu_wheels.sh)"}  # fmt: skip
    x = np.load(os.path.join(args.data, "x.npy"), mmap_mode="r")
    x = np.ascontiguousarray(x)
    graph, doc = build(x, "compiled", "cpu", "auto", memory_limit())
    doc["cores"] = len(os.sched_getaffinity(0))
    doc["recall_all_rows"] = round(recall_against(graph, load(args.data, "exact")), 5)
    return {"rows": x.shape[0], "dim": x.shape[1], "k": K, "compiled": doc}


def step_equal(args) -> dict:
    """The torch engine's exact graph on ``--device`` (fp16 GEMMs on CUDA) against the same
    code on the CPU (fp32) and, where faiss and Dask are here, the compiled engine: identical
    ids and distance bits (one code, two devices)."""
    x = synthetic(args.rows, args.dim, args.seed, args.device)
    limit = memory_limit()
    ref, doc = build(x, "torch", args.device, "exact", limit)
    out: dict = {"rows": args.rows, "dim": args.dim, "k": K, args.device: doc}
    others = [("torch", "cpu")] if args.device != "cpu" else []
    if not _absent("faiss") and not _absent("distributed"):
        others.append(("compiled", "cpu"))
    for engine, device in others:
        graph, facts = build(x, engine, device, "exact", limit)
        same = np.array_equal(graph.neighbors, ref.neighbors) and np.array_equal(
            graph.distances.view(np.uint32), ref.distances.view(np.uint32)
        )
        out[f"{engine}-{device}"] = {**facts, "identical_to_" + args.device: bool(same)}
    return out


def step_mp(args) -> dict:
    from d2scale.d2 import d2_order

    graph = load(args.data, args.graph)
    scores = np.random.default_rng(args.seed).random(graph.n)
    doc: dict = {"nodes": graph.n, "k": graph.k, "budget_fraction": 0.3}
    for device in args.mp_devices:
        t0 = time.perf_counter()
        res = d2_order(graph, scores, gamma=1.0, budget=int(0.3 * graph.n), device=device)
        doc[device] = {"wall_s": round(time.perf_counter() - t0, 3), "edges": res.n_edges,
                       "seconds": res.stats.get("seconds")}  # fmt: skip
        doc[device]["order_sha"] = _digest(res.order)
    return doc


def step_select(args) -> dict:
    """``d2scale synth`` of a ``--rows`` pool, then ``d2scale select`` on it with the torch
    engine on ``--device`` (fraction 0.3, k 10, image features): wall times and run.json's
    facts."""
    import subprocess
    import tempfile

    if _absent("distributed"):
        return {"skipped": "select needs dask and distributed: carry their wheels "
                "(benchmarks/gpu_wheels.sh)"}  # fmt: skip
    root = args.save or tempfile.mkdtemp(prefix="gpu-check-select-")
    pool, out = os.path.join(root, "pool"), os.path.join(root, "out")
    d2 = D2SCALE
    shards = max(1, min(64, args.rows // 250_000))
    doc: dict = {"rows": args.rows, "shards": shards}
    for name, cmd in (
        ("synth", [*d2, "synth", "--out", pool, "--rows", str(args.rows), "--shards",
                   str(shards), "--layout", "f16-stored"]),
        ("select", [*d2, "select", "--metadata-dir", pool, "--out", out, "--fraction", "0.3",
                    "--n-neighbors", str(K), "--feature-type", "image", "--graph-engine",
                    "torch", "--device", args.device, "--quiet"]),
    ):  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        doc[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        if proc.returncode != 0:
            doc[f"{name}_error"] = proc.stderr.strip().splitlines()[-5:]
            return doc
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    graph = run.get("graph") or {}
    keep = (
        "graph_engine",
        "device",
        "device_name",
        "index",
        "nlist",
        "nprobe",
        "recall",
        "shards",
        "peak_device_bytes",
        "peak_rss_bytes",
        "timings",
    )
    doc["graph"] = {k: graph[k] for k in keep if k in graph}
    doc |= {k: run.get(k) for k in ("timings_s", "method", "counts")}
    return doc


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _absent(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return True
    return False


def step_versions(args) -> dict:
    doc = {"host": host_info()}
    for m in ("torch", "cupy", "numba", "numpy", "faiss", "dask", "distributed"):
        try:
            doc[m] = __import__(m).__version__
        except Exception as e:  # noqa: BLE001 - reported, not raised
            doc[m] = f"missing ({type(e).__name__})"
    from d2scale.graph.torch_engine import resolve_engine

    doc["graph_engine_auto"] = resolve_engine("auto", "auto")
    try:
        import torch

        doc["cuda"] = torch.cuda.is_available()
        if doc["cuda"]:
            doc["gpu"] = torch.cuda.get_device_name()
            doc["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    except ImportError:
        pass
    return doc


def merge(paths: list[str]) -> dict:
    """One document: ``{step: its JSON (or its error)}`` for the step files given."""
    doc = {}
    for p in paths:
        name = os.path.splitext(os.path.basename(p))[0]
        try:
            with open(p) as f:
                doc[name] = json.load(f)
        except (OSError, ValueError) as e:
            doc[name] = {"error": f"no JSON ({type(e).__name__}: the step failed or timed out)"}
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["versions", "equal", "graph", "cpu-engine", "mp", "select",
                                    "merge"])  # fmt: skip
    p.add_argument("files", nargs="*", help="merge: the step files")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--exact", action="store_true", help="graph: also the exact graph")
    p.add_argument("--recall-rows", type=int, default=2000)
    p.add_argument(
        "--save",
        help="graph: directory for the rows and graphs; select: for the pool and the selection",
    )
    p.add_argument("--data", help="cpu-engine, mp: a directory written by graph --save")
    p.add_argument("--graph", default="ivf", choices=["ivf", "exact"], help="mp: which graph")
    p.add_argument("--mp-devices", nargs="+", default=["cuda"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.step == "merge":
        doc = merge(args.files)
    else:
        t0 = time.perf_counter()
        steps = {"versions": step_versions, "equal": step_equal, "graph": step_graph,
                 "cpu-engine": step_cpu_engine, "mp": step_mp, "select": step_select}  # fmt: skip
        doc = steps[args.step](args)
        doc["step_s"] = round(time.perf_counter() - t0, 3)
    json.dump(doc, sys.stdout, indent=1, default=str)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
