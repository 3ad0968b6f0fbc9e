"""Read throughput of a pool, as `select` reads it; prints one JSON document.

    python benchmarks/bench_io.py POOL_DIR [--workers N]

Two passes over the pool's shards, one Dask task per shard on the local cluster of
`select`: the read stage (uid and score columns of the parquet files, npz headers checked),
then every embedding block (npz members decoded, re-normalised, float32). Rates are rows/s
and GB/s of the files' bytes on disk (parquet: whole files, although only two columns are
read) and of the decoded float32 embeddings. The page cache is whatever it is (a pool read
right after it was written is cached): the JSON says nothing it did not measure.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _block_bytes(blocks, i: int) -> int:
    return int(blocks.load(i).nbytes)


def measure(pool_dir: str, workers: int | None = None) -> dict:
    from d2scale.backends import dask_client
    from d2scale.pool.sources import PoolEmbeddings, feature_keys, open_pool
    from d2scale.select.pipeline import read_metadata

    pool = open_pool(pool_dir)
    keys = feature_keys("l14", "image_text")
    parquet = sum(os.path.getsize(s.parquet) for s in pool.shards)
    npz = sum(os.path.getsize(s.npz) for s in pool.shards)
    with dask_client(workers=workers) as client:
        t0 = time.perf_counter()
        read_metadata(pool, "clip_l14_similarity_score", client, keys)
        t1 = time.perf_counter()
        blocks = PoolEmbeddings(pool, keys)
        n = len(pool.shards)
        decoded = sum(client.gather(client.map(_block_bytes, [blocks] * n, range(n))))
        t2 = time.perf_counter()
    meta_s, emb_s = t1 - t0, t2 - t1
    return {
        "shards": len(pool.shards),
        "metadata": {"seconds": round(meta_s, 3), "rows_per_s": round(pool.n / meta_s),
                     "parquet_gb_per_s": round(parquet / meta_s / 1e9, 3),
                     "parquet_gb": round(parquet / 1e9, 3)},
        "embeddings": {"seconds": round(emb_s, 3), "rows_per_s": round(pool.n / emb_s),
                       "npz_gb_per_s": round(npz / emb_s / 1e9, 3), "npz_gb": round(npz / 1e9, 3),
                       "decoded_gb_per_s": round(decoded / emb_s / 1e9, 3),
                       "features": "+".join(keys)},
        "threads": workers or os.cpu_count(),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pool")
    p.add_argument("--workers", type=int)
    args = p.parse_args()
    print(json.dumps(measure(args.pool, args.workers), indent=1))


if __name__ == "__main__":
    main()
