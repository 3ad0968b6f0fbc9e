"""How far `--greedy standby` is from the seed's DataComp script, and why; prints one JSON.

    python benchmarks/bench_d2_reference.py [--rows 20000] [--k 5] [--gamma 1.0]

On a synthetic DataComp pool (`d2scale synth`, l14 image_text features, CLIP score + 0.115)
and its exact kNN graph, it runs `d2-reference` (the script's semantics), `--greedy standby`
and the exact greedy, and reports the Jaccard index of their selected sets at 10/30/50%.
Then it feeds the standby loop the script's inputs one at a time, to show which difference
moves the result: (A) standby as it is; (B) + the script's forward pass (directed lists,
own score clamped at eps); (C) + squared distances in forward and reverse; (D) + the
script's tie order (higher row first). (D) must equal d2-reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
from common import host_info

from d2scale.d2.order import d2_order
from d2scale.d2.standby import _standby
from d2scale.graph import build_knn_graph
from d2scale.methods.d2_reference import EPS, reference_order, search_results
from d2scale.pool.sources import PoolEmbeddings, feature_keys, open_pool, read_columns
from d2scale.pool.synth import write_pool
from d2scale.types import KnnGraph

FRACTIONS = (0.1, 0.3, 0.5)


def jaccard(a: np.ndarray, b: np.ndarray, budget: int) -> float:
    x, y = set(a[:budget].tolist()), set(b[:budget].tolist())
    return round(len(x & y) / len(x | y), 4)


def load_pool(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit l14 image_text features and shifted CLIP scores of a fresh synthetic pool."""
    with tempfile.TemporaryDirectory() as d:
        write_pool(d, rows=rows, shards=4, seed=seed)
        pool = open_pool(d)
        emb = PoolEmbeddings(pool, feature_keys("l14", "image_text"))
        x = np.concatenate([emb.load(i) for i in range(len(pool.shards))])
        cols = [read_columns(pool, s, ["clip_l14_similarity_score"]) for s in pool.shards]
    scores = np.concatenate([c.column(0).to_numpy().astype(np.float64) for c in cols])
    return x, scores + 0.115


def loop(
    knn: KnnGraph,
    scores,
    gamma: float,
    budget: int,
    *,
    script_forward: bool,
    squared: bool,
    higher_first: bool,
) -> np.ndarray:
    """The standby loop on inputs that differ from the script's in the chosen ways."""
    d = np.asarray(knn.distances, dtype=np.float64)
    d = d * d if squared else d
    if script_forward:  # directed lists, own score clamped
        g = (np.exp(-d) * np.maximum(scores[knn.neighbors], EPS)).sum(axis=1)
        g = g + np.maximum(scores, EPS)
    else:  # SPEC §1 forward over the symmetrised graph, as --greedy standby computes it
        g = d2_order(knn, scores, gamma=gamma, budget=0).forward
    static = np.argsort(g, kind="stable")[::-1] if higher_first else np.argsort(-g, kind="stable")
    weights = np.exp(-gamma * d)
    return _standby(np.ascontiguousarray(knn.neighbors), weights, g.copy(), static.copy(), budget)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    x, scores = load_pool(args.rows, args.seed)
    from d2scale.types import ArrayBlocks

    knn, _ = build_knn_graph(ArrayBlocks(x), n_neighbors=args.k, index="exact", device="cpu")
    n = knn.n
    full = n
    ids, sq = search_results(knn)
    t1 = time.perf_counter()
    reference, _ = reference_order(ids, sq, scores, gamma=args.gamma, budget=full)
    t_ref = time.perf_counter() - t1
    standby = d2_order(knn, scores, gamma=args.gamma, greedy="standby", budget=full).order
    exact = d2_order(knn, scores, gamma=args.gamma, budget=full).order
    steps = {
        "A_standby_as_is": {"script_forward": False, "squared": False, "higher_first": False},
        "B_plus_script_forward": {"script_forward": True, "squared": False, "higher_first": False},
        "C_plus_squared_distances": {
            "script_forward": True,
            "squared": True,
            "higher_first": False,
        },
        "D_plus_tie_order": {"script_forward": True, "squared": True, "higher_first": True},
    }
    ablation = {}
    for name, kw in steps.items():
        order = loop(knn, scores, args.gamma, full, **kw)
        ablation[name] = {f"{f:g}": jaccard(order, reference, int(f * n)) for f in FRACTIONS}
    assert np.array_equal(
        loop(knn, scores, args.gamma, full, **steps["D_plus_tie_order"]), reference
    )
    assert np.array_equal(loop(knn, scores, args.gamma, full, **steps["A_standby_as_is"]), standby)
    doc = {
        "benchmark": "bench_d2_reference",
        "pool": {"rows": n, "features": "l14 image_text", "score": "clip_l14 + 0.115",
                 "graph": f"exact, k={args.k}", "gamma": args.gamma, "seed": args.seed},
        "jaccard_vs_reference": {
            "standby": {f"{f:g}": jaccard(standby, reference, int(f * n)) for f in FRACTIONS},
            "exact_greedy": {f"{f:g}": jaccard(exact, reference, int(f * n)) for f in FRACTIONS},
        },
        "jaccard_standby_vs_exact": {
            f"{f:g}": jaccard(standby, exact, int(f * n)) for f in FRACTIONS},
        "ablation_jaccard_vs_reference": ablation,
        "reference_seconds_full_order": round(t_ref, 3),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "host": host_info(),
    }  # fmt: skip
    json.dump(doc, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
