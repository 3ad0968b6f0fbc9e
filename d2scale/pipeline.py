"""``select``: the stages in order — pool → scores → kNN graph → D2 order → subset files."""

from __future__ import annotations

import os
import platform
import resource
import time

import numpy as np

from d2scale import __version__
from d2scale.errors import D2ScaleError
from d2scale.params import SelectParams, budget_for
from d2scale.runner import Progress, ProgressFn, dask_client, stage
from d2scale.sinks import check_writable, save_json
from d2scale.sources import (
    Pool,
    PoolEmbeddings,
    check_npz,
    feature_keys,
    open_pool,
    read_columns,
)
from d2scale.types import KnnGraph
from d2scale.uids import check_unique, encode_uids


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
            uids, scores = read_metadata(pool, params.resolved_score_column, client, keys)
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
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
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


def read_metadata(
    pool: Pool, score_column: str, client, npz_keys: list[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded uids and float64 scores for the whole pool, one Dask task per shard.

    Also checks the npz headers for ``npz_keys`` so that a bad shard fails in seconds.
    """
    n = len(pool.shards)
    futures = client.map(
        _read_shard, [pool] * n, pool.shards, [score_column] * n, [list(npz_keys)] * n, pure=False
    )
    parts = client.gather(futures)
    uids = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    check_unique(uids, where=f"metadata directory {pool.url}")
    return uids, scores


def _read_shard(pool: Pool, shard, score_column: str, npz_keys: list[str]):
    check_npz(pool, shard, npz_keys)
    table = read_columns(pool, shard, ["uid", score_column])
    uids = encode_uids(table.column("uid"), where=shard.parquet)
    scores = table.column(score_column).to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise D2ScaleError(
            f"{shard.parquet}, row {int(bad[0])}: score column {score_column!r} is null, NaN "
            f"or inf ({bad.size} rows in all)"
        )
    return uids, scores


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
