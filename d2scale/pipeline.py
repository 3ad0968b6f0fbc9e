"""``select``: read → kNN graph → method → sinks, each a keyed stage under ``OUT/work``."""

from __future__ import annotations

import dataclasses
import os
import platform
import time

import numpy as np

from d2scale import __version__, io
from d2scale.chain import chain_steps, output_fractions, run_chain
from d2scale.errors import D2ScaleError
from d2scale.graph_stage import graph_stage
from d2scale.methods import MethodInputs
from d2scale.params import SelectParams, budget_for
from d2scale.runner import Progress, ProgressFn, Stages, dask_client, stage_key
from d2scale.sinks import write_outputs
from d2scale.sources import (
    Pool,
    PoolEmbeddings,
    check_npz,
    feature_keys,
    open_pool,
    read_columns,
)
from d2scale.types import EmbeddingBlocks, SubsetBlocks
from d2scale.uids import check_unique, encode_uids


def select(params: SelectParams, progress: ProgressFn | None = None) -> dict:
    """Run a selection end to end and commit ``params.out``; return the ``run.json`` record."""
    progress = progress or Progress()
    params.validate()
    if params.metadata_dir is not None:
        check_out_outside_pool(params.out, params.metadata_dir)
    io.check_writable(params.out)
    timings: dict[str, float] = {}
    started = time.time()
    pool = open_pool_or_sample(params.metadata_dir, progress)
    progress(f"pool {pool.url}: {pool.n:,} rows in {len(pool.shards)} shards")
    stages = Stages(io.join(params.out, "work"), progress, timings)
    with dask_client(params.scheduler, params.workers) as client:
        read_key = stage_key(pool.fingerprint, params.stage_params("read"))
        read = stages.run("read", read_key, lambda d: _read_stage(d, pool, params, client))
        uids = io.load_npy(io.join(read.directory, "uids.npy"))
        scores = io.load_npy(io.join(read.directory, "scores.npy"))
        steps = chain_steps(params)
        budgets = {f: budget_for(f, pool.n) for f in output_fractions(params, steps)}
        _check_sizes(params, pool.n, budgets)

        def make_inputs(rows: np.ndarray, rows_key: str, need: int, step) -> MethodInputs:
            whole = rows.shape[0] == pool.n
            step_params = params if whole else dataclasses.replace(params, graph=None)
            if not whole and params.graph is not None:
                raise D2ScaleError("--graph holds the whole pool's graph: use it only when "
                                   "the first step needs a graph.")  # fmt: skip
            return MethodInputs(
                n=rows.shape[0],
                scores=scores[rows] if not whole else scores,
                uids=uids[rows] if not whole else uids,
                budget=need,
                knn_graph=lambda: graph_stage(
                    stages, pool, step_params, client, progress, None if whole else rows, rows_key
                ),  # fmt: skip
                embeddings=lambda: embedding_blocks(pool, params, None if whole else rows),
                column=lambda name: read_column(pool, name, client)[rows],
                stages=stages,
                upstream_key=stage_key(read_key, rows_key),
                client=client,
                seed=params.seed,
                options=step.options,
            )

        chain = run_chain(steps, pool.n, max(budgets.values()), make_inputs, params)
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
        "stages": {
            name: {"key": r.key, "reused": r.reused, "directory": r.directory}
            for name, r in stages.runs.items()
        },
        "timings_s": {name: round(s, 3) for name, s in timings.items()},
        "environment": environment(),
    }
    record = write_outputs(params.out, uids, scores, chain.ranking, budgets, record, started)
    progress(f"wrote {', '.join(record['outputs'])} and run.json to {params.out}")
    return record


def open_pool_or_sample(metadata_dir: str | None, progress: ProgressFn) -> Pool:
    """The pool at ``metadata_dir``, or the built-in sample pool when it is None."""
    if metadata_dir is not None:
        return open_pool(metadata_dir)
    from d2scale.synth import sample_pool_dir

    progress("no --metadata-dir given: using the built-in 100k-row sample pool (made on first use)")
    return open_pool(sample_pool_dir())


def check_out_outside_pool(out: str, metadata_dir: str) -> None:
    """Refuse an output directory that is the pool or inside it (outputs would join it)."""
    if not (io.is_local(out) and io.is_local(metadata_dir)):
        return
    out_path = os.path.realpath(io.local_path(out))
    pool_path = os.path.realpath(io.local_path(metadata_dir))
    if out_path == pool_path or out_path.startswith(pool_path + os.sep):
        raise D2ScaleError(
            f"the output directory {out} is inside the metadata directory {metadata_dir}; "
            "choose an --out outside the pool."
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


def _read_stage(directory: str, pool: Pool, params: SelectParams, client) -> dict:
    keys = feature_keys(params.embedding_model, params.feature_type)
    uids, scores = read_metadata(pool, params.resolved_score_column, client, keys)
    io.save_npy(io.join(directory, "uids.npy"), uids)
    io.save_npy(io.join(directory, "scores.npy"), scores + params.score_shift)
    return {"rows": int(uids.shape[0])}


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
