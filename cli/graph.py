"""``d2scale graph``: build a pool's kNN graph into a directory (resumable)."""

from __future__ import annotations

import os

from d2scale.runner import ProgressFn, dask_client


def build_graph_dir(args, progress: ProgressFn) -> None:
    from d2scale.graph import build_knn_graph, save_graph
    from d2scale.pipeline import open_pool_or_sample
    from d2scale.sinks import check_writable
    from d2scale.sources import PoolEmbeddings, feature_keys

    check_writable(args.out)
    pool = open_pool_or_sample(args.metadata_dir, progress)
    blocks = PoolEmbeddings(pool, feature_keys(args.embedding_model, args.feature_type))
    progress(f"pool {pool.url}: {pool.n:,} rows, {blocks.dim}-d {args.feature_type} features")
    with dask_client(args.scheduler, args.workers) as client:
        knn, info = build_knn_graph(
            blocks,
            n_neighbors=args.n_neighbors,
            index=args.index,
            recall=args.recall,
            memory_limit=args.memory_limit,
            device=args.device,
            seed=args.seed,
            client=client,
            workdir=args.out,
            progress=progress,
        )
    meta = {**info, "fingerprint": pool.fingerprint, "metadata_dir": pool.url,
            "embedding_model": args.embedding_model, "feature_type": args.feature_type}  # fmt: skip
    save_graph(args.out, knn, meta)
    progress(f"wrote {os.path.join(args.out, 'neighbors.npy')} ({knn.n:,} × {knn.k})")
