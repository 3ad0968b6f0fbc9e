"""What a selection method may read about its rows: scores, uids, any parquet column, the
embeddings, the kNN graph (built on first use, as a stage), step options, the stage runner
for results worth keeping, and the Dask client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from d2scale.params import PARAMS
from d2scale.stages import Stages
from d2scale.types import EmbeddingBlocks, KnnGraph

# The global flags that shape ``MethodInputs.embeddings()`` and ``knn_graph()``, and those
# of message passing (SPEC §1: the stages forward and reverse). A method module lists those
# it reads in its ``FLAGS``; one set that no step of a selection reads is a warning
# (select/chain.py).
EMBEDDING_FLAGS = ("feature_type",)  # which embeddings ``embeddings()`` and the graph use
GRAPH_FLAGS = (*EMBEDDING_FLAGS, "n_neighbors", "index", "recall", "graph_engine", "graph")
MESSAGE_PASSING_FLAGS = tuple(p.name for p in PARAMS.values() if p.stage in ("forward", "reverse"))


@dataclass
class MethodInputs:
    """Inputs of one method run over ``n`` rows (the pool, or a chain step's survivors).

    ``knn_graph()`` returns ``(graph, key)``: the kNN graph of these rows and the key of the
    stage that made it (to key stages built on it). ``embeddings()`` streams the rows'
    embeddings of the selected feature type; ``column(name)`` reads a parquet column for
    them. ``stages`` keys and keeps results under ``OUT/work``; ``upstream_key`` identifies
    the rows and scores. ``budget`` is how many picks are needed; ``options`` holds the
    step's own settings (``--then semdedup:eps=0.05`` → ``{"eps": "0.05"}``).
    """

    n: int
    scores: np.ndarray
    uids: np.ndarray
    budget: int
    knn_graph: Callable[[], tuple[KnnGraph, str]]
    embeddings: Callable[[], EmbeddingBlocks]
    column: Callable[[str], np.ndarray]
    stages: Stages
    upstream_key: str
    client: Any = None
    seed: int = 0
    options: dict = field(default_factory=dict)
