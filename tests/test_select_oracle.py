"""`d2scale select` against an independent exact implementation of SPEC §1 on an unseen pool."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from clirun import run_cli
from oracle import d2_order, knn_bruteforce

from d2scale.pool.synth import write_pool


def independent_selection(pool: str, fraction: float, k: int, gamma: float) -> set[str]:
    """Read the pool with NumPy/pyarrow only, then brute-force kNN, forward and greedy."""
    uids, scores, embs = [], [], []
    for name in sorted(f[:-8] for f in os.listdir(pool) if f.endswith(".parquet")):
        t = pq.read_table(os.path.join(pool, f"{name}.parquet"))
        uids += t["uid"].to_pylist()
        scores.append(t["clip_l14_similarity_score"].to_numpy().astype(np.float64))
        x = np.load(os.path.join(pool, f"{name}.npz"))["l14_img"].astype(np.float64)
        embs.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    x, s = np.concatenate(embs), np.concatenate(scores)
    order, _ = d2_order(knn_bruteforce(x, k), s, gamma=gamma, budget=int(fraction * len(s)))
    return {uids[i] for i in order}


@pytest.mark.parametrize(
    ("rows", "seed", "layout"),
    [
        (400, 101, "f16-compressed"),
        (300, 202, "mixed"),
        pytest.param(1500, 303, "mixed", marks=pytest.mark.slow),
    ],
)
def test_select_equals_independent_exact_d2(tmp_path, rows, seed, layout):
    pool = tmp_path / "pool"
    write_pool(str(pool), rows=rows, shards=2, seed=seed, layout=layout)
    out = tmp_path / "out"
    cmd = ["select", "--metadata-dir", pool,
           "--out", out, "--index", "exact", "--score-shift", "0", "--feature-type", "image",
           "--n-neighbors", "5", "--gamma", "0.1", "--fraction", "0.3", "--quiet"]  # fmt: skip
    proc = run_cli(*cmd)
    assert proc.returncode == 0, proc.stderr
    got = np.load(out / "uids.npy")
    expected = independent_selection(str(pool), 0.3, 5, 0.1)
    enc = np.array(sorted((int(u[:16], 16), int(u[16:], 16)) for u in expected), np.dtype("u8,u8"))
    assert got.shape == (int(0.3 * rows),)
    assert np.array_equal(got, enc)
