"""``select``: read → kNN graph → method → sinks, each a keyed stage under ``OUT/work``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from collections.abc import Iterator

import numpy as np

from d2scale import __version__, io
from d2scale.errors import D2ScaleError
from d2scale.graph_stage import graph_stage
from d2scale.methods import MethodInputs, get_method
from d2scale.params import SelectParams, budget_for
from d2scale.runner import (
    Progress,
    ProgressFn,
    Stages,
    check_cluster_options,
    cluster_facts,
    dask_client,
    peak_rss_bytes,
    stage_key,
    worker_peak_rss,
)
from d2scale.sinks import write_outputs
from d2scale.sources import Pool, check_npz, feature_keys, open_pool, read_columns
from d2scale.uids import check_unique, encode_uids


def select(
    params: SelectParams,
    progress: ProgressFn | None = None,
    *,
    client=None,
    pool: Pool | None = None,
) -> dict:
    """Run a selection end to end and commit ``params.out``; return the ``run.json`` record.

    ``client``: a ``distributed.Client`` to run on (default: per ``params``, a running
    cluster or a local one); ``pool``: an opened pool (default: ``params.metadata_dir``).
    """
    progress = progress or Progress(log_json=params.log_json)
    params.validate()
    params = absolute_out(params)
    if client is None:
        check_cluster_options(params.scheduler, params.scheduler_file)
    io.check_writable(params.out)
    timings: dict[str, float] = {}
    started = time.time()
    pool = pool or open_pool_or_sample(params.metadata_dir, progress)
    check_out_outside_pool(params.out, pool)
    progress(f"pool {pool.url}: {pool.n:,} rows in {len(pool.shards)} shards")
    stages = Stages(io.join(params.out, "work"), progress, timings)
    with _client(params, client) as client:
        ranking, uids, scores, budgets = _run_stages(params, pool, stages, client, progress)
        cluster = {**cluster_facts(client), **_memory(client, remote=client.cluster is None)}
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
        "counts": {"n": pool.n, "edges_symmetric": ranking.info.get("n_edges")},
        "graph": stages.runs["graph"].info if "graph" in stages.runs else None,
        "method": {"name": "d2", **ranking.info},
        "stages": {
            name: {"key": r.key, "reused": r.reused, "directory": r.directory}
            for name, r in stages.runs.items()
        },
        "timings_s": {name: round(s, 3) for name, s in timings.items()},
        "rates": stage_rates(stages, timings, pool.n, ranking.info.get("n_edges")),
        "cluster": cluster,
        "environment": environment(),
    }
    remove_report(params.out)  # a report describes the set it was made from
    with_write = write_outputs(params.out, uids, scores, ranking, budgets, record, started)
    progress(f"wrote {', '.join(with_write['outputs'])} to {params.out}")
    if params.report:
        from d2scale.report import write_report

        progress(f"report: {write_report(params.out)}")
    return with_write


def _run_stages(params: SelectParams, pool: Pool, stages: Stages, client, progress):
    """read → graph → method; ``(ranking, uids, scores, budgets)``."""
    read_key = stage_key(pool.fingerprint, params.stage_params("read"))
    read = stages.run("read", read_key, lambda d: _read_stage(d, pool, params, client, progress))
    uids = io.load_npy(io.join(read.directory, "uids.npy"))
    scores = io.load_npy(io.join(read.directory, "scores.npy"))
    budgets = {f: budget_for(f, pool.n) for f in params.fraction}
    _check_sizes(params, pool.n, budgets)
    inputs = MethodInputs(
        n=pool.n,
        scores=scores,
        budget=max(budgets.values()),
        knn_graph=lambda: graph_stage(stages, pool, params, client, progress),
        stages=stages,
        upstream_key=read_key,
        client=client,
    )
    return get_method("d2")(inputs, params), uids, scores, budgets


@contextlib.contextmanager
def _client(params: SelectParams, client) -> Iterator:
    if client is not None:
        yield client
        return
    with dask_client(params.scheduler, params.workers, params.scheduler_file) as own:
        yield own


def absolute_out(params: SelectParams) -> SelectParams:
    """``params`` with a local ``out`` made absolute: Dask tasks may run in another working
    directory (a worker process's own), and must write where the driver reads."""
    if not io.is_local(params.out):
        return params
    return dataclasses.replace(params, out=os.path.abspath(io.local_path(params.out)))


def stage_rates(stages: Stages, timings: dict[str, float], n: int, edges: int | None) -> dict:
    """Rows (and edges) per second of every stage computed in this run."""
    rates = {}
    for name, run in stages.runs.items():
        seconds = timings.get(name, 0.0)
        if run.reused or seconds <= 0:
            continue
        rates[name] = {"rows_per_s": round(n / seconds, 1)}
        if edges and name in ("forward", "reverse"):
            rates[name]["edges_per_s"] = round(edges / seconds, 1)
    return rates


def _memory(client, remote: bool) -> dict:
    """Peak resident memory: this process (with a local cluster, its workers too) and, on a
    running cluster, each worker process."""
    facts = {"peak_rss_bytes_driver": peak_rss_bytes()}
    if remote:
        facts["peak_rss_bytes_workers"] = worker_peak_rss(client)
    return facts


def remove_report(out: str) -> None:
    """Remove ``report.html`` and ``report/`` of an earlier run (``d2scale report`` remakes
    them from the committed set)."""
    io.remove(io.join(out, "report.html"))
    io.remove(io.join(out, "report"), recursive=True)


def open_pool_or_sample(metadata_dir: str | None, progress: ProgressFn) -> Pool:
    """The pool at ``metadata_dir``, or the built-in sample pool when it is None."""
    if metadata_dir is not None:
        return open_pool(metadata_dir)
    from d2scale.synth import sample_pool_dir

    progress("no --metadata-dir given: using the built-in 100k-row sample pool (made on first use)")
    return open_pool(sample_pool_dir())


def check_out_outside_pool(out: str, pool: Pool) -> None:
    """Refuse an output directory that is the pool or inside it (outputs would join it)."""
    if not (io.is_local(out) and io.is_local(pool.url)):
        return
    out_path = os.path.realpath(io.local_path(out))
    pool_path = os.path.realpath(io.local_path(pool.url))
    if out_path == pool_path or out_path.startswith(pool_path + os.sep):
        raise D2ScaleError(
            f"the output directory {out} is inside the metadata directory {pool.url}; "
            "choose an --out outside the pool."
        )


def _read_stage(directory: str, pool: Pool, params: SelectParams, client, progress) -> dict:
    keys = feature_keys(params.embedding_model, params.feature_type)
    uids, scores = read_metadata(pool, params.resolved_score_column, client, keys, progress)
    io.save_npy(io.join(directory, "uids.npy"), uids)
    io.save_npy(io.join(directory, "scores.npy"), scores + params.score_shift)
    return {"rows": int(uids.shape[0])}


def read_metadata(
    pool: Pool,
    score_column: str,
    client,
    npz_keys: list[str] = (),
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded uids and float64 scores for the whole pool, one Dask task per shard.

    Also checks the npz headers for ``npz_keys`` so that a bad shard fails in seconds.
    """
    from distributed import as_completed

    n = len(pool.shards)
    futures = client.map(
        _read_shard, [pool] * n, pool.shards, [score_column] * n, [list(npz_keys)] * n, pure=False
    )
    say = progress or (lambda message: None)
    say(f"read: 0/{n} shards")
    for i, future in enumerate(as_completed(futures), 1):
        future.result()  # the first failing shard raises here
        say(f"read: {i}/{n} shards")
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


def environment() -> dict:
    """Versions and host facts for ``run.json``."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("numpy", "faiss-cpu", "faiss-gpu", "numba", "dask", "distributed", "pyarrow",
                "fsspec", "cupy-cuda13x"):  # fmt: skip
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
