"""DataComp's image-based baseline: cluster the pool's image embeddings with k-means and keep
the samples of the clusters that some target embedding (DataComp: ImageNet-1k training
images) falls into.

As in DataComp, centroids come from L2 k-means (faiss, 20 iterations, seeded, no
sub-sampling) and both pool rows and targets are assigned to the centroid with the largest
inner product. DataComp also applies a caption filter first; chain ``basic`` before this
method for that.
"""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods._kmeans import assign, kmeans, unit_rows


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
