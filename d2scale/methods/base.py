"""What a selection method may read: scores, the kNN graph (built on first use, as a
stage), the stage runner for results worth keeping, and the Dask client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from d2scale.runner import Stages
from d2scale.types import KnnGraph


@dataclass
class MethodInputs:
    """Inputs of one method run over ``n`` rows.

    ``knn_graph()`` returns ``(graph, key)``: the kNN graph of the rows and the key of the
    stage that made it (to key stages built on it). ``stages`` keys and keeps results under
    ``OUT/work``; ``upstream_key`` identifies the rows and scores (the read stage).
    """

    n: int
    scores: np.ndarray
    budget: int
    knn_graph: Callable[[], tuple[KnnGraph, str]]
    stages: Stages
    upstream_key: str
    client: Any = None
