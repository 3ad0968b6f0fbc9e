"""faiss k-means and nearest-centroid assignment, shared by the clustering methods."""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError


def kmeans(
    x: np.ndarray, n_clusters: int, *, seed: int, n_iter: int = 20, spherical: bool = False
) -> np.ndarray:
    """``n_clusters`` centroids (float32) of the rows of ``x`` by faiss k-means, trained on
    every row (no sub-sampling), seeded."""
    from d2scale.blas import load_faiss

    faiss = load_faiss()

    x = np.ascontiguousarray(x, dtype=np.float32)
    if not 1 <= n_clusters <= x.shape[0]:
        raise D2ScaleError(
            f"the number of clusters must be between 1 and the number of rows ({x.shape[0]}); "
            f"got {n_clusters}."
        )
    km = faiss.Kmeans(
        x.shape[1],
        n_clusters,
        niter=n_iter,
        seed=seed,
        spherical=spherical,
        max_points_per_centroid=max(1, x.shape[0]),
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (int64) of the centroid with the largest inner product with each row (ties →
    lower centroid), as DataComp and SemDeDup assign their clusters."""
    from d2scale.blas import load_faiss

    faiss = load_faiss()

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, labels = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int64)


def unit_rows(x: np.ndarray, what: str = "embedding") -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); a zero or non-finite row is an error."""
    x64 = np.asarray(x, dtype=np.float64)
    if x64.ndim != 2:
        raise D2ScaleError(f"{what}s must be a 2-D array; got shape {x64.shape}.")
    norms = np.linalg.norm(x64, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise D2ScaleError(f"{what} of row {int(bad[0])} is zero or not finite.")
    return (x64 / norms[:, None]).astype(np.float32)


def gather(blocks) -> np.ndarray:
    """All rows of an :class:`~d2scale.types.EmbeddingBlocks` as one float32 array."""
    parts = [blocks.load(i) for i in range(len(blocks.sizes))]
    return np.concatenate(parts) if parts else np.empty((0, blocks.dim), np.float32)
