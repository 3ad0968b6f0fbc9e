"""Message-passing speed of `d2scale mp` on synthetic k=10 kNN graphs; prints one JSON document.

    python benchmarks/bench_mp.py [--sizes 1M,2M,4M,12.8M] [--workdir DIR] [--repeats 3]

Graphs (built once per size under --workdir, reused): nodes sit on a 1-D latent line cut
into clusters of log-normal sizes; each node draws 3k candidates near it in its cluster and
keeps the k best by popularity (log-normal, which creates hubs: a realistic in-degree
spread) plus Gumbel noise; distances grow with latent separation and are symmetric. Node
ids are then shuffled, as in a DataComp pool whose order says nothing about geometry.

Reported per size: `d2scale mp` (full order, γr=1.0) as a subprocess, process start and
file loading included, *with a warm numba cache* (a small run first compiles and caches
the kernels): wall seconds, its stage seconds (symmetrize, forward, reverse; `other_s` is
the rest: start, imports, loading, writing), peak RSS and peak RSS per symmetric edge —
of the whole process (interpreter, libraries, resident pages of the mapped input
included: the figure the goal, ≤ 16 bytes per edge and ≤ 13 s at 12.8M nodes, is stated
in), and above the small run's peak and the input files; in-process stage times.
`oracle_identity`: `d2scale mp`'s order on a smaller graph of the same generator
(--oracle-n) against the plain O(N²) oracle of tests/oracle.py (symmetrisation, forward
sum and greedy written out in Python).
Baselines: a plain-Python heapq lazy greedy and a reference-style dense n×n argmax loop
(SPEC §4) at 20k nodes, and the heapq greedy on the first size's graph (its per-node cost
grows with N); both heapq runs must reproduce d2scale's order. Agreement of the
approximate variants (bucketed, standby) with the exact order is the Jaccard index of the
selected sets at 10/30/50% budgets.
The machine is shared: the load average is recorded next to the timings.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
from common import host_info
from numba import njit

K = 10
GAMMA = 1.0
SIZES = {"1M": 1_000_000, "2M": 2_000_000, "4M": 4_000_000, "12.8M": 12_800_000}
GOAL = {"size": "12.8M", "wall_s": 13.0, "bytes_per_edge": 16.0}  # issue 20, item 2


# --- synthetic graph ------------------------------------------------------------------------


@njit(cache=True)
def _knn_lists(n, k, seed):
    """Directed kNN lists on the latent line (ids not yet shuffled)."""
    np.random.seed(seed)
    pop = np.exp(np.random.standard_normal(n))  # popularity: hubs
    neighbors = np.empty((n, k), np.int64)
    distances = np.empty((n, k), np.float32)
    lo = 0
    while lo < n:
        hi = min(n, lo + max(2 * k, int(np.exp(np.random.normal(7.0, 1.0)))))
        for i in range(lo, hi):
            _node_lists(i, lo, hi, k, pop, neighbors[i], distances[i])
        lo = hi
    return neighbors, distances


@njit(cache=True)
def _node_lists(i, lo, hi, k, pop, nb, dist):
    m = 3 * k
    cand = np.empty(m, np.int64)
    key = np.empty(m, np.float64)
    for c in range(m):
        j = i
        while j == i:
            j = min(hi - 1, max(lo, i + int(np.round(np.random.laplace(0.0, 2.0 * k)))))
        cand[c] = j
        key[c] = np.log(pop[j]) - np.log(-np.log(np.random.random())) - abs(i - j) / (4.0 * k)
    for t in range(k):  # k best distinct candidates
        best = np.argmax(key)
        j = cand[best]
        for c in range(m):
            if cand[c] == j:
                key[c] = -np.inf
        a, b = min(i, j), max(i, j)
        noise = ((a * 2654435761 + b * 40503) % 1000003) / 1000003.0  # symmetric in (i, j)
        nb[t] = j
        dist[t] = 0.3 + 0.6 * (1.0 - np.exp(-abs(i - j) / (8.0 * k))) + 0.1 * noise
    order = np.argsort(dist, kind="mergesort")
    nb[:] = nb[order]
    dist[:] = dist[order]


def make_graph(gdir: str, n: int, seed: int = 0) -> dict:
    """Write neighbors.npy, distances.npy, scores.npy (+ latent.npy) unless already there."""
    done = os.path.join(gdir, "_COMPLETE")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    os.makedirs(gdir, exist_ok=True)
    t0 = time.perf_counter()
    nb, dist = _knn_lists(n, K, seed)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)  # latent position -> node id
    neighbors = np.empty_like(nb)
    neighbors[perm] = perm[nb]
    distances = np.empty_like(dist)
    distances[perm] = dist
    del nb, dist
    scores = 0.115 + np.clip(rng.normal(0.3, 0.05, n), 0.0, 0.6)  # CLIP-score-like, shifted
    latent = np.empty(n, np.int64)
    latent[perm] = np.arange(n)
    for name, arr in (
        ("neighbors", neighbors),
        ("distances", distances),
        ("scores", scores),
        ("latent", latent),
    ):
        np.save(os.path.join(gdir, f"{name}.npy"), arr)
    in_deg = np.bincount(neighbors.ravel(), minlength=n)
    info = {
        "seconds_generate": round(time.perf_counter() - t0, 1),
        "in_degree_quantiles": {
            q: int(np.quantile(in_deg, float(q)))
            for q in ("0.01", "0.25", "0.5", "0.75", "0.99", "1.0")
        },
    }
    with open(done, "w") as f:
        json.dump(info, f)
    return info


# --- `d2scale mp` as a subprocess -----------------------------------------------------------


def mp_command(gdir: str, out: str, extra: list[str]) -> list[str]:
    script = shutil.which("d2scale") or os.path.join(os.path.dirname(sys.executable), "d2scale")
    args = [
        "mp",
        "--graph",
        gdir,
        "--scores",
        os.path.join(gdir, "scores.npy"),
        "--gamma",
        str(GAMMA),
        "--out",
        out,
        *extra,
    ]
    if os.path.exists(script):
        return [script, *args]
    code = "import sys; from d2scale.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def run_mp(gdir: str, out: str, extra: list[str] = ()) -> dict:
    """Wall seconds and peak RSS of one `d2scale mp` process. The RSS comes from GNU time:
    a child forked straight from this (large) process would inherit its high-water mark."""
    rss_file = out + ".rss"
    timer = ["/usr/bin/time", "-f", "%M", "-o", rss_file] if os.path.exists("/usr/bin/time") else []
    t0 = time.perf_counter()
    proc = subprocess.run([*timer, *mp_command(gdir, out, list(extra))], capture_output=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"d2scale mp failed: {proc.stderr.decode()}")
    rss = None
    if timer:
        with open(rss_file) as f:
            rss = round(int(f.read().split()[-1]) / 1024, 1)
    err = proc.stderr.decode()
    stages = dict(re.findall(r"(\w+) ([\d.]+)s", err.split("[")[-1]))
    edges = re.search(r"\(([\d,]+) edges\)", err)
    return {"wall_s": round(wall, 3), "peak_rss_mb": rss,
            "stages_s": {k: float(v) for k, v in stages.items()},
            "n_edges": int(edges.group(1).replace(",", "")) if edges else None}  # fmt: skip


def time_mp(gdir: str, n: int, repeats: int, workdir: str, base_rss_mb: float | None) -> dict:
    out = os.path.join(workdir, "order.npy")
    runs = [run_mp(gdir, out) for _ in range(repeats if n < 10_000_000 else 1)]
    walls = sorted(r["wall_s"] for r in runs)
    order = np.load(out)
    assert order.shape == (n,) and len(np.unique(order)) == n
    rss = max((r["peak_rss_mb"] or 0) for r in runs) or None
    stages = {k: round(sorted(r["stages_s"].get(k, 0.0) for r in runs)[len(runs) // 2], 3)
              for k in runs[0]["stages_s"]}  # fmt: skip
    files_mb = (
        sum(
            os.path.getsize(os.path.join(gdir, f"{name}.npy"))
            for name in ("neighbors", "distances", "scores")
        )
        / 2**20
    )
    median = walls[len(walls) // 2]
    edges = runs[0]["n_edges"]
    above = rss and base_rss_mb and round(rss - base_rss_mb - files_mb, 1)
    per_edge = {"bytes_per_edge_peak_rss": rss, "bytes_per_edge_above_small_run_and_files": above}
    return {
        "wall_s": walls,
        "median_us_per_node": round(median / n * 1e6, 3),
        "median_stages_s": stages,
        "other_s": round(median - sum(stages.values()), 3),
        "edges_symmetric": edges,
        "peak_rss_mb": rss,
        "input_files_mb": round(files_mb, 1),
        "peak_rss_above_small_run_and_files_mb": above,
        **{k: mb and edges and round(mb * 2**20 / edges, 2) for k, mb in per_edge.items()},
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def goal_check(label: str, mp: dict) -> dict | None:
    """The issue's goal, at its size only: median wall and the whole process's peak RSS per
    symmetric edge against it."""
    if label != GOAL["size"]:
        return None
    wall = mp["wall_s"][len(mp["wall_s"]) // 2]
    per_edge = mp["bytes_per_edge_peak_rss"]
    met_bytes = per_edge is not None and per_edge <= GOAL["bytes_per_edge"]
    return {**GOAL, "met_wall": wall <= GOAL["wall_s"], "met_bytes_per_edge": met_bytes}


def oracle_identity(workdir: str, n: int) -> dict:
    """`d2scale mp`'s full order on an n-node graph of the same generator against the plain
    oracle (tests/oracle.py), with the near-ties the order had to break."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from oracle import d2_order as oracle_d2_order

    from d2scale.graph.store import load_graph

    gdir = os.path.join(workdir, f"graph-{n}")
    make_graph(gdir, n)
    out = os.path.join(workdir, f"order-{n}.npy")
    run_mp(gdir, out)
    knn, _ = load_graph(gdir)
    t0 = time.perf_counter()
    expected, g = oracle_d2_order(knn, np.load(os.path.join(gdir, "scores.npy")), gamma=GAMMA)
    close = np.sort(g)
    return {
        "n": n,
        "identical": bool(np.array_equal(np.load(out), expected)),
        "oracle_s": round(time.perf_counter() - t0, 2),
        "forward_gaps_below_1e-9": int(np.sum(np.diff(close) < 1e-9)),
    }


# --- in process -----------------------------------------------------------------------------


def in_process(gdir: str) -> tuple[dict, np.ndarray]:
    """Stage times of the library calls behind `d2scale mp`; returns them and the order."""
    from d2scale.d2 import d2_order
    from d2scale.graph.store import load_graph

    knn, _ = load_graph(gdir, mmap=True)
    scores = np.load(os.path.join(gdir, "scores.npy"))
    result = d2_order(knn, scores, gamma=GAMMA)
    timings = result.stats["seconds"]
    n = knn.n
    stats = {f"{k}_s": round(v, 3) for k, v in timings.items()}
    stats.update(
        edges_symmetric=result.n_edges,
        edges_per_node=round(result.n_edges / n, 2),
        forward_nodes_per_s=round(n / timings["forward"]),
        reverse_nodes_per_s=round(n / timings["reverse"]),
        reverse_us_per_node=round(timings["reverse"] / n * 1e6, 3),
    )
    return stats, result.order


# --- baselines at 20k nodes -----------------------------------------------------------------


def heapq_greedy(
    indptr: list,
    indices: list,
    weights: list,
    values: list,
    budget: int | None = None,
    heap: list | None = None,
) -> list[int]:
    """Plain-Python exact greedy on lists with a lazy heapq (stale entries re-pushed or
    dropped); ``values`` (and ``heap``, when given ready-made) are consumed."""
    if heap is None:
        heap = initial_heap(values)
    selected = [False] * len(values)
    order = []
    budget = len(values) if budget is None else budget
    while heap and len(order) < budget:
        neg, u = heapq.heappop(heap)
        cur = values[u]
        if selected[u] or -neg < cur:  # picked, or a newer (higher) entry exists
            continue
        if -neg > cur:  # stale: re-insert with the current score
            heapq.heappush(heap, (-cur, u))
            continue
        selected[u] = True
        order.append(u)
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            if not selected[v]:
                old = values[v]
                values[v] = new = old - weights[e] * cur
                if new > old:
                    heapq.heappush(heap, (-new, v))
    return order


def initial_heap(values: list) -> list:
    heap = [(-v, i) for i, v in enumerate(values)]
    heapq.heapify(heap)
    return heap


def dense_reference(csr, forward) -> None:
    """The reference sampler's loop: dense n×n matrix, argmax, neighbours by a row scan."""
    n = csr.n
    dense = np.zeros((n, n), np.float32)
    dense[np.repeat(np.arange(n), np.diff(csr.indptr)), csr.indices] = csr.distances
    g = forward.copy()
    batch: set[int] = set()
    while len(batch) < n:
        u = int(np.argmax(g))
        nbrs = (dense[u] > 0).nonzero()[0]
        g[nbrs] = g[nbrs] - np.exp(-dense[u, nbrs] * GAMMA) * g[u]
        batch.add(u)
        g[list(batch)] = g.min() - 1


def graph_state(gdir: str):
    from d2scale.d2.forward import forward_scores
    from d2scale.d2.weights import reverse_weights
    from d2scale.graph.store import load_graph
    from d2scale.graph.symmetric import symmetrize

    csr = symmetrize(load_graph(gdir, mmap=True)[0])
    g = forward_scores(csr, np.load(os.path.join(gdir, "scores.npy")))
    return csr, g, reverse_weights(csr, GAMMA)


def heapq_partial(gdir: str, picks: int) -> dict:
    """The heapq greedy's first ``picks`` picks on a large graph (list conversion excluded).
    Per node: heap construction / N + pick time / picks. Early picks are cheaper than late
    ones (fewer stale entries, no raised scores), so a partial run flatters the baseline."""
    from d2scale.d2.reverse import reverse_order

    csr, g, w = graph_state(gdir)
    lists = (csr.indptr.tolist(), csr.indices.tolist(), w.tolist(), g.tolist())
    t0 = time.perf_counter()
    heap = initial_heap(lists[3])
    t1 = time.perf_counter()
    order = heapq_greedy(*lists, budget=picks, heap=heap)
    t2 = time.perf_counter()
    expected = reverse_order(csr, g, gamma=GAMMA, budget=picks)
    return {
        "n": csr.n,
        "picks": picks,
        "heap_build_s": round(t1 - t0, 3),
        "heapq_us_per_node": round(((t1 - t0) / csr.n + (t2 - t1) / picks) * 1e6, 2),
        "order_equals_d2scale": bool(np.array_equal(order, expected)),
    }


def baselines(gdir: str, n: int) -> dict:
    from d2scale.d2.reverse import reverse_order

    csr, g, w = graph_state(gdir)
    lists = (csr.indptr.tolist(), csr.indices.tolist(), w.tolist(), g.tolist())
    t0 = time.perf_counter()
    expected = heapq_greedy(*lists)
    t1 = time.perf_counter()
    order = reverse_order(csr, g, gamma=GAMMA)
    t2 = time.perf_counter()
    dense_reference(csr, g)
    t3 = time.perf_counter()
    return {
        "n": n,
        "heapq_us_per_node": round((t1 - t0) / n * 1e6, 2),
        "heapq": "plain Python lists + heapq, exact lazy greedy (same order as d2scale)",
        "dense_reference": "dense n×n float32 matrix, argmax + row scan per pick",
        "dense_reference_us_per_node": round((t3 - t2) / n * 1e6, 2),
        "d2scale_reverse_us_per_node": round((t2 - t1) / n * 1e6, 3),
        "heapq_order_equals_d2scale": bool(np.array_equal(expected, order)),
    }


# --- agreement of the approximate variants --------------------------------------------------


def agreement(gdir: str, exact: np.ndarray, bucket_counts: list[int]) -> dict:
    """Jaccard of the selected sets against the exact order at 10/30/50% budgets."""
    from d2scale.d2 import d2_order
    from d2scale.graph.store import load_graph

    knn, _ = load_graph(gdir, mmap=True)
    n = knn.n
    scores = np.load(os.path.join(gdir, "scores.npy"))
    latent = np.load(os.path.join(gdir, "latent.npy"))
    variants = {"standby": {"greedy": "standby"}}
    for b in bucket_counts:
        variants[f"buckets_{b}_id_ranges"] = {"buckets": b}
        variants[f"buckets_{b}_latent_ranges"] = {"buckets": latent * b // n}
    out = {}
    for name, kwargs in variants.items():
        t0 = time.perf_counter()
        order = d2_order(knn, scores, gamma=GAMMA, **kwargs).order
        out[name] = {
            "seconds": round(time.perf_counter() - t0, 2),
            **{f"jaccard_{p}pct": jaccard(exact, order, n * p // 100) for p in (10, 30, 50)},
        }
    return out


def jaccard(a: np.ndarray, b: np.ndarray, budget: int) -> float:
    sa, sb = set(a[:budget].tolist()), set(b[:budget].tolist())
    return round(len(sa & sb) / max(1, len(sa | sb)), 4)


# --- main -----------------------------------------------------------------------------------


def speedups(report: dict) -> dict:
    """Per-node speed of `d2scale mp` (end to end) over the heapq greedy's."""
    bases = {"heapq_20k": report["baseline"]["heapq_us_per_node"]}
    if "heapq_large" in report:
        bases[f"heapq_{report['heapq_large']['n']}"] = report["heapq_large"]["heapq_us_per_node"]
    return {
        f"{label}_vs_{name}": round(us / e["mp"]["median_us_per_node"], 1)
        for label, e in report["sizes"].items()
        for name, us in bases.items()
    }


def versions() -> dict:
    import numba

    return {
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1M,2M,4M,12.8M", help=f"comma list of {list(SIZES)}")
    p.add_argument("--workdir", default=os.path.join(os.getcwd(), "bench-mp"))
    p.add_argument("--repeats", type=int, default=3, help="mp runs per size (median reported)")
    p.add_argument(
        "--buckets", default="4,64,1024", help="bucket counts for the agreement ('': none)"
    )
    p.add_argument("--baseline-n", type=int, default=20_000)
    p.add_argument("--oracle-n", type=int, default=20_000,
                   help="nodes of the graph checked against the oracle (0: skip)")  # fmt: skip
    p.add_argument("--heapq-picks", type=int, default=None,
                   help="picks of the heapq greedy on the first size's graph (default: all; "
                   "0: skip)")  # fmt: skip
    return p.parse_args()


def size_entry(label: str, args: argparse.Namespace, base_rss: float | None) -> tuple:
    """Graph facts, `d2scale mp` timings and in-process stage times for one size."""
    n = SIZES[label]
    gdir = os.path.join(args.workdir, f"graph-{n}")
    entry = {"graph": make_graph(gdir, n)}
    entry["mp"] = time_mp(gdir, n, args.repeats, args.workdir, base_rss)
    goal = goal_check(label, entry["mp"])
    if goal:
        entry["goal"] = goal
    entry["in_process"], order = in_process(gdir)
    return entry, gdir, order


def main() -> None:
    args = parse_args()
    small = os.path.join(args.workdir, f"graph-{args.baseline_n}")
    make_graph(small, args.baseline_n)
    run_mp(small, os.path.join(args.workdir, "warmup.npy"))  # compiles and caches the kernels
    base_rss = run_mp(small, os.path.join(args.workdir, "warmup.npy"))["peak_rss_mb"]
    report = {"benchmark": "bench_mp", "host": host_info(), "versions": versions(),
              "gamma": GAMMA, "k": K, "numba_cache": "warm (a small mp run came first)",
              "small_run_peak_rss_mb": base_rss, "load_average_start": os.getloadavg()[0],
              "baseline": baselines(small, args.baseline_n), "sizes": {}}  # fmt: skip
    if args.oracle_n:
        report["oracle_identity"] = oracle_identity(args.workdir, args.oracle_n)
    first = None
    for label in args.sizes.split(","):
        report["sizes"][label], gdir, order = size_entry(label, args, base_rss)
        first = first or (gdir, order)
    if first is not None and args.heapq_picks != 0:
        picks = first[1].size if args.heapq_picks is None else args.heapq_picks
        report["heapq_large"] = heapq_partial(first[0], min(picks, first[1].size))
    report["speedup_mp_vs_heapq"] = speedups(report)
    if first is not None and args.buckets:  # --buckets '': no agreement runs
        counts = [int(b) for b in args.buckets.split(",")]
        agree = agreement(first[0], first[1], counts)
        report["agreement"] = {"graph": os.path.basename(first[0]), **agree}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
