"""Cost of opening a pool (pairing, header checks, content fingerprint) against reading it.

    python benchmarks/bench_open_pool.py [--rows 200000] [--shards 20] [--layout f16-compressed]

Prints ONE JSON document: for a synthetic pool (written once into ``--dir``), the wall time
and bytes read (``/proc/self/io`` rchar, so Linux only) of ``open_pool`` — which reads the
parquet footers and uid pages, the npz directories and ``.npy`` headers and a few sampled
windows — next to reading every uid and score (``read_metadata``) and every ``l14``
image+text embedding (``PoolEmbeddings.load``). Bytes read per shard by ``open_pool`` are
bounded (``d2scale.pool.files``), so its cost grows with the number of shards, not their size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from common import host_info

from d2scale.pool.sources import PoolEmbeddings, feature_keys, open_pool, read_metadata
from d2scale.pool.synth import write_pool


class _InlineClient:
    """read_metadata's two Client calls, run in this thread (no Dask start-up in the timing)."""

    def map(self, fn, *iterables, pure=True):
        return [fn(*args) for args in zip(*iterables, strict=True)]

    def gather(self, futures):
        return futures


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def measure(fn, repeats: int) -> dict:
    times, reads = [], []
    for _ in range(repeats):
        r0, t0 = _rchar(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        reads.append(_rchar() - r0)
    return {"seconds_median": round(statistics.median(times), 4), "bytes_read": max(reads)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--layout", default="f16-compressed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/d2scale-bench-open-pool")
    args = ap.parse_args()
    path = os.path.join(args.dir, f"{args.rows}-{args.shards}-{args.layout}")
    if not os.path.exists(os.path.join(path, "_COMPLETE")):
        write_pool(path, rows=args.rows, shards=args.shards, seed=0, layout=args.layout)
        open(os.path.join(path, "_COMPLETE"), "w").close()
    pool_bytes = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    pool = open_pool(path)
    blocks = PoolEmbeddings(pool, feature_keys("l14", "image_text"))
    results = {
        "open_pool": measure(lambda: open_pool(path), args.repeats),
        "read_metadata": measure(
            lambda: read_metadata(pool, "clip_l14_similarity_score", _InlineClient()), 1
        ),
        "load_embeddings_l14_image_text": measure(
            lambda: [blocks.load(i) for i in range(len(pool.shards))], 1
        ),
    }
    opened = results["open_pool"]["bytes_read"]
    print(json.dumps({
        "benchmark": "open_pool",
        "host": host_info(),
        "pool": {"rows": pool.n, "shards": len(pool.shards), "layout": args.layout,
                 "bytes": pool_bytes},
        "results": results,
        "open_pool_bytes_per_shard": opened // len(pool.shards),
        "open_pool_share_of_pool_bytes": round(opened / pool_bytes, 5),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
