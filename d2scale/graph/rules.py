"""What both graph engines (the compiled one in :mod:`~d2scale.graph.build` and
:mod:`~d2scale.graph.torch_engine`) follow alike: how many rows train and evaluate an IVF
index, the rule that picks the tuned setting, the source's fingerprint, and how the searched
representatives' lists become the graph."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from d2scale.graph import dedup, shards
from d2scale.types import EmbeddingBlocks, KnnGraph

TRAIN_ROWS_PER_LIST = 32  # k-means sample size per list
EVAL_ROWS = (200, 1000)  # held-out rows for recall tuning: bounds ...
EVAL_BUDGET = 1e8  # ... and their share of exact work (rows × n)
FINGERPRINT_ROWS = 256


def pick_setting(curves: dict, cost: dict, target: float) -> tuple:
    """(probing, its curve, (nprobe, candidates), target reached) of the cheapest setting
    whose recall minus one standard error reaches ``target``; else the best recall."""
    ok = [(cost[pm], mode, pm) for mode, cur in curves.items() for pm, (r, se) in cur.items()
          if r - se >= target]  # fmt: skip
    if ok:
        _, mode, best = min(ok, key=lambda t: (t[0], t[1] != "row"))
        return mode, curves[mode], best, True
    top = [(cur[pm], -cost[pm], mode == "row", mode, pm) for mode, cur in curves.items()
           for pm in cur]  # fmt: skip
    *_, mode, best = max(top)
    return mode, curves[mode], best, False


def source_fingerprint(blocks: EmbeddingBlocks, rows: np.ndarray) -> str:
    """The source's own ``fingerprint`` if it has one, else a hash of sizes, dim and seeded
    sample rows."""
    own = getattr(blocks, "fingerprint", None)
    if own is not None:
        return str(own)
    h = hashlib.sha256(json.dumps([list(map(int, blocks.sizes)), int(blocks.dim)]).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def finish(rep: np.ndarray, nbr: np.ndarray, d2: np.ndarray, k: int) -> KnnGraph:
    """Drop each representative itself, take square roots, give duplicates their lists."""
    ids, dd = shards.drop_self(nbr, d2, np.arange(rep.shape[0]), k)
    out_i, out_d = dedup.expand(rep, ids, np.sqrt(dd).astype(np.float32), k)
    return KnnGraph(out_i, out_d)
