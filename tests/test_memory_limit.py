"""``--memory-limit`` bounds the peak memory of ``select`` and never changes the uids."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from d2scale.pool.synth import write_pool


def select(pool: str, out: str, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "d2scale.cli.main", "select", "--metadata-dir", pool,
           "--feature-type", "image_text", "--fraction", "0.3", "--workers", "2",
           "--index", "ivf",  # 40k rows would take the exact path, which has no re-rank blocks
           "--out", out, *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(out, "run.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_memory_limit_bounds_peak_rss_with_the_same_uids(tmp_path):
    pool = str(tmp_path / "pool")
    write_pool(pool, rows=40_000, shards=5, seed=2, layout="f16-stored")  # 1536-d: 246 MB f32
    free = select(pool, str(tmp_path / "free"))
    limited = select(pool, str(tmp_path / "limited"), "--memory-limit", "64MiB")
    # both search one shard of search-space rows kept by the assignment; the limited run
    # re-ranks in small blocks, the free one in one block per thread
    assert limited["graph"]["rerank_blocks"] > free["graph"]["rerank_blocks"]
    assert free["graph"]["shards"] == 1 and free["graph"]["search_rows_from"] == "kept"
    uids = [np.load(tmp_path / d / "uids.npy") for d in ("free", "limited")]
    np.testing.assert_array_equal(*uids)
    # the unlimited run re-ranks half the pool's full rows per task; the limited one not
    peak = [r["cluster"]["peak_rss_bytes_driver"] for r in (limited, free)]
    assert peak[0] < peak[1] - 100 * 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc only")
def test_peak_rss_is_the_programs_own_not_its_parents():
    """``ru_maxrss`` survives fork + exec: a d2scale run started by a large process must
    not report that process's size as its own peak."""
    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # resident, not just reserved
    code = "from d2scale.backends import peak_rss_bytes; print(peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 300 * 2**20
    del ballast
