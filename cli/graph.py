"""``d2scale graph``: build a pool's kNN graph into a directory (resumable)."""

from __future__ import annotations

from d2scale.runner import ProgressFn, dask_client


def build_graph_dir(args, progress: ProgressFn) -> None:
    from d2scale.pipeline import build_graph, open_pool_or_sample
    from d2scale.sinks import check_writable

    check_writable(args.out)
    pool = open_pool_or_sample(args.metadata_dir, progress)
    progress(f"pool {pool.url}: {pool.n:,} rows, {args.feature_type} features")
    with dask_client(args.scheduler, args.workers) as client:
        knn, info = build_graph(pool, args, args.out, client, progress)
    recall = info.get("recall")
    progress(
        f"wrote {args.out}/neighbors.npy ({knn.n:,} × {knn.k}, index {info.get('index')}"
        + (f", recall@k {recall}" if recall is not None else "")
        + ")"
    )
