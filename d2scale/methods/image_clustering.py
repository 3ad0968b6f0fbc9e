"""DataComp's image-based baseline: cluster the pool's image embeddings with k-means and keep
the samples of the clusters that some target embedding (DataComp: ImageNet-1k training
images) falls into.

As in DataComp, centroids come from L2 k-means (faiss, 20 iterations, seeded, no
sub-sampling) and both pool rows and targets are assigned to the centroid with the largest
inner product. DataComp applies its caption filter first and clusters the survivors: chain
``--method caption --then image-clustering:targets=T.npy`` (``basic`` is a different,
stricter filter).
"""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods._kmeans import assign, kmeans, unit_rows
from d2scale.methods._options import REQUIRED, at_least, step_options
from d2scale.methods.base import EMBEDDING_FLAGS


def image_clustering_filter(
    embeddings: np.ndarray,
    targets: np.ndarray,
    *,
    n_clusters: int,
    seed: int = 0,
    n_iter: int = 20,
) -> tuple[np.ndarray, dict]:
    """Rows (int64, row order) whose cluster holds at least one target, and facts for
    ``run.json`` (clusters, target clusters)."""
    x = unit_rows(embeddings)
    t = unit_rows(targets, "target embedding")
    if t.shape[1] != x.shape[1]:
        raise D2ScaleError(
            f"target embeddings have {t.shape[1]} dimensions but the pool's have {x.shape[1]}."
        )
    centroids = kmeans(x, n_clusters, seed=seed, n_iter=n_iter)
    wanted = np.zeros(n_clusters, dtype=bool)
    wanted[assign(t, centroids)] = True
    keep = np.flatnonzero(wanted[assign(x, centroids)]).astype(np.int64)
    info = {"n_clusters": n_clusters, "target_clusters": int(wanted.sum()), "kept": len(keep)}
    return keep, info


FLAGS = EMBEDDING_FLAGS  # the global flags it reads
DESCRIPTION = "DataComp image-based: k-means clusters holding a target embedding (targets=T.npy)"


def options(given: dict, params) -> dict:
    """``targets`` (required), ``clusters`` (None: rows/128, set by ``rank``), ``iterations``."""
    spec = {"targets": (str, REQUIRED), "clusters": (int, None), "iterations": (int, 20)}
    values = step_options("image-clustering", given, spec)
    return at_least("image-clustering", values, 1, "iterations")


def rank(inputs, params):
    """Registry adapter: the step's embeddings (``--feature-type``; DataComp uses ``image``),
    ``targets=PATH.npy`` (n × d), ``clusters=K`` (default rows/128), ``iterations=20``."""
    from d2scale import io
    from d2scale.methods._filters import filter_ranking
    from d2scale.methods._kmeans import gather

    opts = options(inputs.options, params)
    if opts["clusters"] is None:
        opts["clusters"] = max(1, inputs.n // 128)
    try:
        targets = io.load_npy(opts["targets"])
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot read target embeddings {opts['targets']}: {e}") from None
    keep, info = image_clustering_filter(gather(inputs.embeddings()), targets,
                                         n_clusters=opts["clusters"], seed=inputs.seed,
                                         n_iter=opts["iterations"])  # fmt: skip
    info.pop("kept")  # the chain records what the step keeps; "passed" what it passes
    return filter_ranking(keep, inputs, params, {**info, "targets": opts["targets"]})
