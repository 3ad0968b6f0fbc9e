"""``select``: the stages in order — pool → scores → kNN graph → D2 order → subset files."""

from __future__ import annotations

import os
import platform
import time

from d2scale import __version__
from d2scale.errors import D2ScaleError
from d2scale.params import SelectParams, budget_for
from d2scale.runner import Progress, ProgressFn, dask_client, stage
from d2scale.sinks import check_writable, save_json
from d2scale.sources import Pool, PoolEmbeddings, feature_keys, open_pool, read_metadata
from d2scale.types import KnnGraph


def select(params: SelectParams, progress: ProgressFn | None = None) -> dict:
    """Run D2 selection end to end and write ``params.out``; return the ``run.json`` record."""
    progress = progress or Progress()
    params.validate()
    check_writable(params.out)
    timings: dict[str, float] = {}
    started = time.time()
    pool = open_pool_or_sample(params.metadata_dir, progress)
    progress(f"pool {pool.url}: {pool.n:,} rows in {len(pool.shards)} shards")
    with dask_client(params.scheduler, params.workers) as client:
        keys = feature_keys(params.embedding_model, params.feature_type)
        with stage("read metadata", timings, progress):
            meta = read_metadata(pool, params.resolved_score_column, client, keys)
            uids, scores = meta.uids, meta.scores
        scores = scores + params.score_shift
        budgets = {f: budget_for(f, pool.n) for f in params.fractions}
        _check_sizes(params, pool.n, budgets)
        with stage("knn graph", timings, progress):
            knn, graph_info = _graph(params, pool, client, progress)
        with stage("d2", timings, progress):
            from d2scale.engine import d2_order

            d2_timings: dict[str, float] = {}
            result = d2_order(
                knn,
                scores,
                gamma=params.gamma,
                gamma_forward=params.gamma_forward,
                mode=params.mode,
                sampling=params.sampling,
                budget=max(budgets.values()),
                device=params.device,
                greedy=params.greedy,
                buckets=params.buckets,
                client=client,
                timings=d2_timings,
            )
    with stage("write outputs", timings, progress):
        from d2scale.outputs import write_selection

        files = write_selection(params.out, uids, scores, result.forward, result.order, budgets)
    record = {
        "d2scale_version": __version__,
        "command": "select",
        "params": params.to_dict(),
        "input": {
            "metadata_dir": pool.url,
            "fingerprint": pool.fingerprint,
            "rows": pool.n,
            "shards": [s.name for s in pool.shards],
        },
        "counts": {
            "n": pool.n,
            "edges_symmetric": result.n_edges,
            "selected": {f"{f:g}": b for f, b in budgets.items()},
        },
        "graph": graph_info,
        "timings_s": {
            **timings,
            **{f"d2.{k}": v for k, v in d2_timings.items()},
            "total": round(time.time() - started, 3),
        },
        "outputs": files,
        "environment": environment(),
    }
    save_json(os.path.join(params.out, "run.json"), record)
    progress(f"wrote {', '.join(files)} and run.json to {params.out}")
    return record


def open_pool_or_sample(metadata_dir: str | None, progress: ProgressFn) -> Pool:
    """The pool at ``metadata_dir``, or the built-in sample pool when it is None."""
    if metadata_dir:
        return open_pool(metadata_dir)
    from d2scale.synth import sample_pool_dir

    progress("no --metadata-dir given: using the built-in 100k-row sample pool (made on first use)")
    return open_pool(sample_pool_dir())


def _check_sizes(params: SelectParams, n: int, budgets: dict[float, int]) -> None:
    if params.graph is None and params.n_neighbors >= n:
        raise D2ScaleError(
            f"n_neighbors ({params.n_neighbors}) must be smaller than the number of samples ({n})"
        )
    empty = [f for f, b in budgets.items() if b == 0]
    if empty:
        raise D2ScaleError(f"fraction {empty[0]:g} of {n} samples selects nothing")


def _graph(params: SelectParams, pool: Pool, client, progress) -> tuple[KnnGraph, dict]:
    from d2scale.graph import load_graph

    if params.graph:
        knn, meta = load_graph(params.graph)
        if knn.n != pool.n:
            raise D2ScaleError(
                f"graph {params.graph} has {knn.n} rows but the pool has {pool.n} samples"
            )
        if meta.get("pool_fingerprint") not in (None, pool.fingerprint):
            raise D2ScaleError(
                f"graph {params.graph} was built from a different pool than {pool.url}"
            )
        if params.n_neighbors > knn.k:
            raise D2ScaleError(
                f"n_neighbors ({params.n_neighbors}) exceeds the graph's k ({knn.k})"
            )
        knn = KnnGraph(
            knn.neighbors[:, : params.n_neighbors], knn.distances[:, : params.n_neighbors]
        )
        return knn, {"source": params.graph, **meta}
    gdir = os.path.join(params.out, "graph")
    return build_graph(pool, params, gdir, client, progress)


def build_graph(pool: Pool, params, gdir: str, client, progress) -> tuple[KnnGraph, dict]:
    """Build (or resume) the kNN graph of ``pool`` into ``gdir``, recording its source.

    ``params`` needs the reader and kNN fields of :class:`SelectParams` (CLI args work too).
    """
    from d2scale.graph import build_knn_graph

    keys = feature_keys(params.embedding_model, params.feature_type)
    source = {
        "pool_fingerprint": pool.fingerprint,
        "metadata_dir": pool.url,
        "embedding_model": params.embedding_model,
        "feature_type": params.feature_type,
    }
    return build_knn_graph(
        PoolEmbeddings(pool, keys),
        n_neighbors=params.n_neighbors,
        index=params.index,
        recall=params.recall,
        memory_limit=params.memory_limit,
        device=params.device,
        seed=params.seed,
        client=client,
        workdir=gdir,
        progress=progress,
        meta=source,
    )


def environment() -> dict:
    """Versions and host facts for ``run.json``."""
    import importlib.metadata as md

    versions = {}
    for pkg in (
        "numpy",
        "faiss-cpu",
        "faiss-gpu",
        "numba",
        "dask",
        "distributed",
        "pyarrow",
        "fsspec",
        "cupy-cuda13x",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": versions,
    }
