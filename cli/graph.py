"""``d2scale graph``: build a pool's kNN graph into a directory (resumable)."""

from __future__ import annotations

from d2scale.cli.flags import add_flags, values


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser(
        "graph",
        help="build and save the kNN graph of a pool",
        epilog=epilog,
        description="Writes GDIR/neighbors.npy (int64 N×K, pool order), GDIR/distances.npy "
        "(float32 N×K, Euclidean) and GDIR/meta.json; rerunning resumes an interrupted build.",
    )
    p.add_argument("--out", required=True, metavar="GDIR", help="graph directory")
    add_flags(p, "graph")
    p.set_defaults(run=run)


def run(args) -> int:
    from d2scale.progress import HEARTBEAT_S, Progress
    from d2scale.select.pipeline import check_log_outside_pool

    options = values(args, "graph")
    check_log_outside_pool(options["log_json"], options["metadata_dir"])
    progress = Progress(options["quiet"], log_json=options["log_json"], heartbeat=HEARTBEAT_S)
    try:
        return _build(args, options, progress)
    finally:
        progress.close()


def _build(args, options: dict, progress) -> int:
    import contextlib

    from d2scale import io
    from d2scale.backends import dask_client
    from d2scale.graph.torch_engine import resolve_engine
    from d2scale.params import GraphConfig
    from d2scale.progress import plural
    from d2scale.select.graph_stage import build_graph
    from d2scale.select.pipeline import check_out_outside_pool, open_pool_or_sample

    config = GraphConfig.of(options)
    # the engine that runs; --device cuda without a GPU for it is refused before any work
    engine, _, _ = resolve_engine(config.graph_engine, config.device)
    if options["metadata_dir"] is not None:
        check_out_outside_pool(args.out, options["metadata_dir"])
    io.check_writable(args.out)
    if config.index == "exact":
        _warn_unread_recall(config, progress, "an exact index has no recall target")
    pool = open_pool_or_sample(options["metadata_dir"], progress)
    progress(f"pool {pool.url}: {plural(pool.n, 'row')}, {config.feature_type} features")
    cluster = (  # the torch engine runs in this process: no Dask cluster
        contextlib.nullcontext(None)
        if engine == "torch"
        else dask_client(options["scheduler"], options["workers"], options["scheduler_file"])
    )
    with cluster as client:
        knn, info = build_graph(pool, config, args.out, client, progress)
    if config.index == "auto" and info.get("index") == "exact":
        _warn_unread_recall(
            config, progress, "--index auto built an exact graph (no recall target)"
        )
    recall = info.get("recall")
    progress(
        f"wrote {args.out}/neighbors.npy ({knn.n:,} × {knn.k}, index {info.get('index')}, "
        f"engine {info.get('graph_engine')} on {info.get('device')}"
        + (f", recall@k {recall}" if recall is not None else "")
        + ")"
    )
    return 0


def _warn_unread_recall(config, progress, why: str) -> None:
    """A --recall away from its default that the exact graph never reads (as ``select``
    warns for ``--index exact --recall``)."""
    from d2scale.params import PARAMS

    if config.recall != PARAMS["recall"].default:
        progress(f"warning: --recall {config.recall:g} changes nothing: {why}")
