"""The kNN graph stage of ``select`` and ``d2scale graph``: build (or resume) the graph of a
pool's embeddings, or load and check a graph given with ``--graph``.

Inside ``select`` the graph lives in ``OUT/work/graph-<key>-k<K>/``; ``key`` covers the
pool's content fingerprint and every parameter that changes the graph except ``k``, so a
rerun with a smaller ``--n-neighbors`` can take the first columns of an exact graph with a
larger ``k`` (exact lists sorted by (distance, id) truncate to exactly the smaller graph).
IVF graphs are tuned for their own ``k`` and are not truncated.
"""

from __future__ import annotations

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.params import GraphConfig, SelectParams
from d2scale.pool.sources import Pool, PoolEmbeddings, feature_keys
from d2scale.progress import ProgressFn
from d2scale.stages import StageRun, Stages, stage_key
from d2scale.types import KnnGraph, SubsetBlocks


def source_facts(pool: Pool, config: GraphConfig) -> dict:
    """What a graph was built from (stored in its ``meta.json``)."""
    return {
        "pool_fingerprint": pool.fingerprint,
        "metadata_dir": pool.url,
        "embedding_model": config.embedding_model,
        "feature_type": config.feature_type,
    }


def build_graph(
    pool: Pool, config: GraphConfig, gdir: str, client, progress: ProgressFn, rows=None
):
    """Build (or resume) the kNN graph of ``pool`` (of its ``rows`` only, when given) into
    ``gdir``; ``(graph, facts)``."""
    from d2scale.graph import build_knn_graph

    blocks = PoolEmbeddings(pool, feature_keys(config.embedding_model, config.feature_type))
    return build_knn_graph(
        blocks if rows is None else SubsetBlocks(blocks, rows),
        **config.build_options(),
        client=client,
        workdir=gdir,
        progress=progress,
        meta=source_facts(pool, config),
    )


def graph_stage(
    stages: Stages,
    pool: Pool,
    params: SelectParams,
    client,
    progress: ProgressFn,
    rows=None,
    rows_key: str = "all",
) -> tuple[KnnGraph, str]:
    """The graph stage of ``select``: ``(graph with params.n_neighbors columns, stage key)``
    of the whole pool, or of its sorted ``rows`` (identified by ``rows_key``)."""
    from d2scale.graph import load_graph

    if params.graph is not None:
        return _given_graph(stages, pool, params)
    if rows is not None and params.n_neighbors >= len(rows):
        raise D2ScaleError(
            f"n_neighbors ({params.n_neighbors}) must be smaller than the {len(rows)} rows "
            "left by the previous steps"
        )
    graph_params = params.stage_params("graph")
    del graph_params["n_neighbors"], graph_params["graph"], graph_params["graph_engine"]
    if params.index == "exact":  # no recall target: another --recall builds the same graph
        del graph_params["recall"]
    graph_params.update(engine_key(params.graph_engine, params.device))
    key = stage_key(pool.fingerprint, rows_key, graph_params)
    directory = _larger_exact_graph(stages, key, params.n_neighbors)
    if directory is None:
        directory = stages.directory("graph", f"{key}-k{params.n_neighbors}")

    def build(d: str) -> dict:
        _, info = build_graph(pool, params.graph_config, d, client, progress, rows)
        return {k: v for k, v in info.items() if k != "timings"} | {"timings": info["timings"]}

    run = stages.run("graph", key, build, directory=directory)
    knn, _ = load_graph(run.directory, mmap=True)
    return _first_columns(knn, params.n_neighbors), stage_key(key, params.n_neighbors)


def engine_key(engine: str, device: str) -> dict:
    """The graph engine's part of the stage key: the engine that runs (``auto`` resolved)
    and, for the torch engine, its device (its IVF lists come from that device's
    arithmetic). The compiled engine adds nothing: its keys are those from before the
    option existed."""
    from d2scale.graph.torch_engine import resolve_engine

    used, torch_device, _ = resolve_engine(engine, device)
    if used == "compiled":
        return {}
    return {"graph_engine": used, "graph_device": torch_device}


def _larger_exact_graph(stages: Stages, key: str, k: int) -> str | None:
    """A finished exact graph of the same key with more than ``k`` neighbours, if any."""
    best = None
    for name in io.listdir(stages.root):
        if not name.startswith(f"graph-{key}-k"):
            continue
        directory = io.join(stages.root, name)
        info = stages.done(directory)
        if info and info.get("index") == "exact" and int(name.rsplit("-k", 1)[1]) > k:
            best = directory if best is None else min(best, directory, key=_k_of)
    return best


def _k_of(directory: str) -> int:
    return int(directory.rsplit("-k", 1)[1])


def _first_columns(knn: KnnGraph, k: int) -> KnnGraph:
    if knn.k == k:
        return knn
    return KnnGraph(knn.neighbors[:, :k], knn.distances[:, :k])


def _given_graph(stages: Stages, pool: Pool, params: SelectParams) -> tuple[KnnGraph, str]:
    """Load ``params.graph`` and refuse one built from other rows, features or model."""
    from d2scale.graph import load_graph

    knn, meta = load_graph(params.graph, mmap=True)
    if knn.n != pool.n:
        raise D2ScaleError(f"graph {params.graph} has {knn.n} rows but the pool has {pool.n}")
    expected = source_facts(pool, params.graph_config)
    if "pool_fingerprint" not in meta:
        raise D2ScaleError(
            f"graph {params.graph} does not record the pool it was built from (no source facts "
            "in meta.json); build it with `d2scale graph`."
        )
    for name in ("pool_fingerprint", "embedding_model", "feature_type"):
        if meta.get(name) != expected[name]:
            what = "a different pool" if name == "pool_fingerprint" else f"{name} {meta[name]}"
            raise D2ScaleError(
                f"graph {params.graph} was built from {what}, not from "
                f"{expected[name] if name != 'pool_fingerprint' else pool.url}; rebuild it "
                "or drop --graph."
            )
    if params.n_neighbors > knn.k:
        raise D2ScaleError(f"n_neighbors ({params.n_neighbors}) exceeds the graph's k ({knn.k})")
    key = stage_key("given", meta)
    stages.runs["graph"] = StageRun(
        "graph", key, params.graph, True, {"source": params.graph, **meta}
    )
    return _first_columns(knn, params.n_neighbors), stage_key(key, params.n_neighbors)
