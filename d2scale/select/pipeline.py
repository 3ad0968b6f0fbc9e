"""``select``: read → kNN graph → method → sinks, each a keyed stage under ``OUT/work``."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2scale import __version__, io
from d2scale.backends import (
    announcing_compiles,
    check_cluster_options,
    cluster_facts,
    dask_client,
    peak_rss_bytes,
    resolve_device,
    worker_peak_rss,
)
from d2scale.d2.reverse import cpu_only_variant
from d2scale.errors import D2ScaleError
from d2scale.methods import MethodInputs
from d2scale.params import SelectParams, budget_for
from d2scale.pool.sources import (
    Pool,
    PoolEmbeddings,
    feature_keys,
    open_pool,
    read_columns,
    read_metadata,
)
from d2scale.progress import HEARTBEAT_S, Progress, ProgressFn, plural, scoped
from d2scale.select.chain import (
    ChainResult,
    KeepRule,
    chain_steps,
    keep_rule,
    run_chain,
    unread_flags,
)
from d2scale.select.graph_stage import graph_stage
from d2scale.select.sinks import is_output_file, write_outputs
from d2scale.stages import Stages, stage_key
from d2scale.types import EmbeddingBlocks, SubsetBlocks


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
    if progress is None:
        own = Progress(log_json=params.log_json, heartbeat=HEARTBEAT_S)
        try:
            return select(params, own, client=client, pool=pool)
        finally:
            own.close()
    params.validate()
    # an unknown method or step option, or a contradictory chain, stops here, before any work
    steps = chain_steps(params)
    rule = keep_rule(params, steps)
    ignored = unread_flags(steps, params)
    params = absolute_paths(params)
    check_device(params, steps)
    if client is None:
        check_cluster_options(params.scheduler, params.scheduler_file, params.workers)
    if pool is None and params.metadata_dir is not None:
        check_out_outside_pool(params.out, params.metadata_dir)
    elif pool is not None:
        for directory in sorted({os.path.dirname(s.parquet) for s in pool.shards}):
            check_out_outside_pool(params.out, directory)
    io.check_writable(params.out)
    for warning in ignored:
        progress(f"warning: {warning}")
    timings: dict[str, float] = {}
    started = time.time()
    pool = pool or open_pool_or_sample(params.metadata_dir, progress)
    progress(f"pool {pool.url}: {plural(pool.n, 'row')} in {plural(len(pool.shards), 'shard')}")
    stages = Stages(io.join(params.out, "work"), progress, timings)
    with _client(params, client) as client, announcing_compiles(progress):
        chain, uids, scores, budgets = _run_stages(
            params, steps, rule, pool, stages, client, progress
        )
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
        "counts": {"n": pool.n, "edges_symmetric": chain.ranking.info.get("n_edges")},
        "graph": stages.runs["graph"].info if "graph" in stages.runs else None,
        "method": {"name": steps[-1].method, **chain.ranking.info},
        "steps": chain.steps,
        "keep": keep_record(rule, chain),
        "ignored_flags": ignored,
        "stages": {
            name: {"key": r.key, "reused": r.reused, "directory": r.directory}
            for name, r in stages.runs.items()
        },
        "timings_s": {name: round(s, 3) for name, s in timings.items()},
        "rates": stage_rates(stages, timings, pool.n, chain.ranking.info.get("n_edges")),
        "cluster": cluster,
        "environment": environment(),
    }
    remove_report(params.out)  # a report describes the set it was made from
    record = write_outputs(params.out, uids, scores, chain.ranking, budgets, record, started,
                           uid_text=_uid_text(stages.runs["read"]))  # fmt: skip
    progress(f"wrote {', '.join(record['outputs'])} and run.json to {params.out}")
    if params.report:
        from d2scale.select.report import write_report

        progress(f"report: {write_report(params.out, pool, progress)}")
    return record


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8))
    return h.hexdigest()[:16]


def _run_stages(params: SelectParams, steps: list, rule: KeepRule, pool: Pool, stages: Stages,
                client, progress):  # fmt: skip
    """read → the chain of ``steps`` (graph stages on demand); ``(chain, uids, scores,
    budgets)``; ``budgets`` maps each fraction written by ``rule`` (``None``: every row the
    last step passes) to its row count."""
    # The metadata is always read again (seconds, against hours for the graph): the pool's
    # fingerprint samples the parquet files, so later stages are keyed on the values read.
    read_key = stage_key(pool.fingerprint, params.stage_params("read"))
    read = stages.run("read", read_key, lambda d: _read_stage(d, pool, params, client, progress),
                      accept=lambda facts: False)  # fmt: skip
    uids = io.load_npy(io.join(read.directory, "uids.npy"))
    scores = io.load_npy(io.join(read.directory, "scores.npy"))
    read_key = stage_key(read_key, _digest(uids, scores))
    budgets = {f: budget_for(f, pool.n) for f in rule.fractions or ()}
    _check_sizes(params, pool.n, budgets)

    numbers = iter(range(1, len(steps) + 1))

    def make_inputs(rows: np.ndarray, rows_key: str, need: int, step) -> MethodInputs:
        step_progress = progress
        if len(steps) > 1:  # a chain: each step's stages and graph are named for it
            name = f"step {next(numbers)}/{len(steps)} ({step.method})"
            progress(f"{name}: {plural(rows.shape[0], 'row')} in, {need:,} to keep")
            stages.progress = step_progress = scoped(progress, name)
        whole = rows.shape[0] == pool.n

        def knn_graph():
            if not whole and params.graph is not None:  # asked only by a step that needs it
                raise D2ScaleError("--graph holds the whole pool's graph: use it only when "
                                   "the first step needs a graph.")  # fmt: skip
            return graph_stage(stages, pool, params, client, step_progress,
                               None if whole else rows, rows_key)  # fmt: skip

        return MethodInputs(
            n=rows.shape[0],
            scores=scores[rows] if not whole else scores,
            uids=uids[rows] if not whole else uids,
            budget=need,
            knn_graph=knn_graph,
            embeddings=lambda: embedding_blocks(pool, params, None if whole else rows),
            column=lambda name: read_column(pool, name, client)[rows],
            stages=stages,
            upstream_key=stage_key(read_key, rows_key),
            client=client,
            seed=params.seed,
            options=step.options,
        )

    chain = run_chain(steps, pool.n, max(budgets.values(), default=None), make_inputs, params)
    for warning in chain.warnings:
        progress(f"warning: {warning}")
    kept = len(chain.ranking.order)
    budgets = {f: min(b, kept) for f, b in budgets.items()} if budgets else {None: kept}
    return chain, uids, scores, budgets


def keep_record(rule: KeepRule, chain: ChainResult) -> dict:
    """``run.json``'s account of how much was kept and by which rule and order."""
    order = chain.ranking.info.get("order")
    text = rule.rule
    if rule.last_is_filter and rule.fractions is not None:
        text += f": the filter's passing rows, first by {order}"
    return {"rule": text, "fractions": rule.fractions, "filter": rule.last_is_filter,
            "order": order, "warnings": chain.warnings}  # fmt: skip


def check_device(params: SelectParams, steps: list) -> str:
    """The device message passing runs on for ``steps``; ``--device cuda`` where it cannot
    run is refused here, before any work (a cached stage must not hide it)."""
    uses_d2 = any(step.method == "d2" for step in steps)
    cpu_only = cpu_only_variant(params.greedy, params.buckets) if uses_d2 else None
    return resolve_device(params.device, cpu_only)


@contextlib.contextmanager
def _client(params: SelectParams, client) -> Iterator:
    if client is not None:
        yield client
        return
    with dask_client(params.scheduler, params.workers, params.scheduler_file) as own:
        yield own


def absolute_paths(params: SelectParams) -> SelectParams:
    """``params`` with a local ``out`` made absolute (Dask tasks may run in another working
    directory, a worker process's own, and must write where the driver reads) and a
    relative pool path too (``run.json`` records it: ``report`` reads the pool from any
    directory); URLs are kept as given."""
    if io.is_local(params.out):
        params = dataclasses.replace(params, out=os.path.abspath(io.local_path(params.out)))
    pool = params.metadata_dir
    if pool is not None and "://" not in pool:
        params = dataclasses.replace(params, metadata_dir=os.path.abspath(pool))
    return params


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


REPORT_FILES = ("report.html", "report")  # the report of a select output directory


def remove_report(out: str) -> None:
    """Remove ``report.html`` and ``report/`` of an earlier run (``d2scale report`` remakes
    them from the committed set)."""
    io.remove(io.join(out, REPORT_FILES[0]))
    io.remove(io.join(out, REPORT_FILES[1]), recursive=True)


def open_pool_or_sample(metadata_dir: str | None, progress: ProgressFn) -> Pool:
    """The pool at ``metadata_dir``, or the built-in sample pool when it is None."""
    if metadata_dir is not None:
        return open_pool(metadata_dir)
    from d2scale.pool.synth import sample_pool_dir

    progress("no --metadata-dir given: using the built-in 100k-row sample pool (made on first use)")
    return open_pool(sample_pool_dir())


def check_out_outside_pool(
    out: str, metadata_dir: str, what: str = "the output directory", flag: str = "an --out"
) -> None:
    """Refuse an output directory (or ``what`` else, given as ``flag``: the JSON log) that
    is the pool or inside it (outputs would join it, a log would append to a pool file)."""
    if not (io.is_local(out) and io.is_local(metadata_dir)):
        return
    out_path = os.path.realpath(io.local_path(out))
    pool_path = os.path.realpath(io.local_path(metadata_dir))
    if out_path == pool_path or out_path.startswith(pool_path + os.sep):
        raise D2ScaleError(
            f"{what} {out} is inside the metadata directory {metadata_dir}; "
            f"choose {flag} outside the pool."
        )


def check_log_outside_pool(log_json: str | None, metadata_dir: str | None) -> None:
    """Refuse a ``--log-json`` file in the pool: it is opened (and appended to) before the
    pool is read, so ``--log-json pool/x.parquet`` would damage a shard."""
    if log_json not in (None, "-") and metadata_dir is not None:
        check_out_outside_pool(log_json, metadata_dir, "the JSON log", "a --log-json")


def check_log_not_an_output(log_json: str | None, out: str) -> None:
    """Refuse a ``--log-json`` that is a file ``select`` writes into ``out`` (run.json,
    uids*.npy, ranking.parquet; the report, removed by every run): the events logged after
    the commit would go to the replaced file and be lost."""
    if log_json in (None, "-") or not (io.is_local(log_json) and io.is_local(out)):
        return
    out_path = os.path.realpath(io.local_path(out))
    directory, name = os.path.split(os.path.realpath(io.local_path(log_json)))
    report = directory == os.path.join(out_path, REPORT_FILES[1])
    if report or (directory == out_path and (is_output_file(name) or name == REPORT_FILES[0])):
        raise D2ScaleError(
            f"the JSON log {log_json} is a file written into {out}; choose a --log-json "
            "that is not one of its outputs."
        )


def embedding_blocks(pool: Pool, params, rows: np.ndarray | None = None) -> EmbeddingBlocks:
    """The pool's embeddings of the selected feature type (only ``rows``, when given)."""
    blocks = PoolEmbeddings(pool, feature_keys(params.embedding_model, params.feature_type))
    return blocks if rows is None else SubsetBlocks(blocks, rows)


def read_column(pool: Pool, name: str, client) -> np.ndarray:
    """One parquet column of the whole pool, in pool order (one Dask task per shard)."""
    n = len(pool.shards)
    tables = client.gather(client.map(read_columns, [pool] * n, pool.shards, [[name]] * n))
    return np.concatenate([t.column(name).to_numpy(zero_copy_only=False) for t in tables])


def _read_stage(directory: str, pool: Pool, params: SelectParams, client, progress) -> dict:
    keys = feature_keys(params.embedding_model, params.feature_type)
    meta = read_metadata(pool, params.resolved_score_column, client, keys)
    io.save_npy(io.join(directory, "uids.npy"), meta.uids)
    io.save_npy(io.join(directory, "scores.npy"), meta.scores + params.score_shift)
    if meta.spelling is not None:  # uids not written as 32 lower-case digits: keep their text
        with io.atomic_path(io.join(directory, "uid_text.parquet")) as tmp:
            pq.write_table(pa.table({"uid": meta.spelling}), tmp)
    return {"rows": int(meta.uids.shape[0]), "uid_text": meta.spelling is not None}


def _uid_text(read) -> pa.ChunkedArray | None:
    if not read.info.get("uid_text"):
        return None
    fs, path = io.filesystem(io.join(read.directory, "uid_text.parquet"))
    with fs.open(path, "rb") as f:
        return pq.read_table(f).column("uid")


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
    from d2scale.blas import blas_kernels

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": versions,
        "blas": blas_kernels(),
    }
