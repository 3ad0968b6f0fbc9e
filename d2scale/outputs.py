"""Selection outputs: DataComp subset files (``uids*.npy``) and ``ranking.parquet``."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2scale.sinks import atomic_path, save_npy
from d2scale.uids import subset_array


def uid_strings(encoded: np.ndarray) -> pa.Array:
    """32-char lowercase hex strings for encoded uids (vectorised)."""
    both = np.empty((encoded.shape[0], 2), dtype=">u8")
    both[:, 0] = encoded["f0"]
    both[:, 1] = encoded["f1"]
    hexed = both.tobytes().hex()
    return pa.array([hexed[i : i + 32] for i in range(0, len(hexed), 32)], pa.string())


def subset_file_names(budgets: dict[float, int]) -> dict[float, str]:
    """``uids.npy`` for one fraction, ``uids-<fraction>.npy`` for several."""
    if len(budgets) == 1:
        return {next(iter(budgets)): "uids.npy"}
    return {f: f"uids-{f:g}.npy" for f in budgets}


def write_selection(
    out: str,
    uids: np.ndarray,
    scores: np.ndarray,
    forward: np.ndarray,
    order: np.ndarray,
    budgets: dict[float, int],
) -> list[str]:
    """Write one subset file per fraction (prefixes of ``order``) and the ranking table."""
    written = []
    for fraction, name in subset_file_names(budgets).items():
        picked = order[: budgets[fraction]]
        save_npy(os.path.join(out, name), subset_array(uids[picked]))
        written.append(name)
    rank = np.full(uids.shape[0], -1, dtype=np.int64)
    rank[order] = np.arange(order.shape[0], dtype=np.int64)
    table = pa.table(
        {
            "uid": uid_strings(uids),
            "score": pa.array(scores, pa.float64()),
            "forward_score": pa.array(forward, pa.float64()),
            "rank": pa.array(rank, pa.int64(), mask=rank < 0),
        }
    )
    with atomic_path(os.path.join(out, "ranking.parquet")) as tmp:
        pq.write_table(table, tmp)
    written.append("ranking.parquet")
    return written
