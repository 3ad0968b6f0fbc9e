"""SemDeDup (Abbas et al. 2023; NeMo Curator's semantic deduplication): remove semantic
near-duplicates within k-means clusters of unit embeddings.

Rows are clustered by spherical k-means (faiss, seeded) and assigned to the centroid of
largest cosine. Within a cluster the rows are sorted by their cosine distance to the
centroid (``keep="hard"``: farthest first, SemDeDup's default; ``"easy"``: nearest first;
ties → lower row), and a row is removed when its cosine similarity to any row *before it* in
that order exceeds ``1 − eps`` (removed or not, as SemDeDup). A group of rows that are all
within ``eps`` of each other therefore keeps exactly its first row.
"""

from __future__ import annotations

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.methods._kmeans import assign, kmeans, unit_rows
from d2scale.methods._options import REQUIRED, at_least, step_options
from d2scale.methods.base import EMBEDDING_FLAGS

KEEP = ("hard", "easy")


def semdedup_filter(
    embeddings: np.ndarray,
    *,
    eps: float,
    n_clusters: int,
    seed: int = 0,
    n_iter: int = 20,
    keep: str = "hard",
) -> tuple[np.ndarray, dict]:
    """Rows that survive (int64, row order), and facts for ``run.json``."""
    if not 0 <= eps < 1:
        raise D2ScaleError(f"the 'eps' parameter must be in [0, 1); got {eps!r}.")
    if keep not in KEEP:
        raise D2ScaleError(f"the 'keep' parameter must be one of {', '.join(KEEP)}; got {keep!r}.")
    x = unit_rows(embeddings)
    centroids = kmeans(x, n_clusters, seed=seed, n_iter=n_iter, spherical=True)
    labels = assign(x, centroids)
    removed = np.zeros(x.shape[0], dtype=bool)
    members = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[members], np.arange(n_clusters + 1))
    for c in range(n_clusters):
        rows = members[starts[c] : starts[c + 1]]
        if rows.size < 2:
            continue
        distance = 1.0 - x[rows] @ centroids[c] / np.linalg.norm(centroids[c])
        order = rows[np.argsort(-distance if keep == "hard" else distance, kind="stable")]
        removed[order] = dominated(x[order], 1.0 - eps)
    kept = np.flatnonzero(~removed).astype(np.int64)
    info = {"n_clusters": n_clusters, "eps": eps, "keep": keep, "removed": int(removed.sum())}
    return kept, info


def dominated(x: np.ndarray, threshold: float, max_cells: int = 1 << 24) -> np.ndarray:
    """For unit rows in order: is row j's cosine to some earlier row i < j above
    ``threshold``? Computed in row blocks of at most ``max_cells`` similarities."""
    m = x.shape[0]
    out = np.zeros(m, dtype=bool)
    block = max(1, min(m, max_cells // max(m, 1)))
    for a in range(0, m, block):
        b = min(m, a + block)
        sims = x[a:b].astype(np.float64) @ x[:b].T.astype(np.float64)
        later = np.arange(b)[None, :] >= np.arange(a, b)[:, None]  # i ≥ j: not earlier
        sims[later] = -np.inf
        out[a:b] = sims.max(axis=1) > threshold
    return out


FLAGS = EMBEDDING_FLAGS  # the global flags it reads
DESCRIPTION = (
    "SemDeDup: one row per group of near-duplicates (cosine > 1 − eps) in k-means clusters"
)


def options(given: dict, params) -> dict:
    """``eps`` (required), ``clusters`` (None: rows/128, set by ``rank``), ``keep``,
    ``iterations``."""
    spec = {"eps": (float, REQUIRED), "clusters": (int, None), "keep": (str, "hard"),
            "iterations": (int, 20)}  # fmt: skip
    return at_least("semdedup", step_options("semdedup", given, spec), 1, "iterations")


def rank(inputs, params):
    """Registry adapter: the step's embeddings (``--feature-type``), ``eps=E`` (required),
    ``clusters=K`` (default rows/128), ``keep=hard|easy``, ``iterations=20``."""
    from d2scale.methods._filters import filter_ranking
    from d2scale.methods._kmeans import gather

    opts = options(inputs.options, params)
    if opts["clusters"] is None:
        opts["clusters"] = max(1, inputs.n // 128)
    kept, info = semdedup_filter(gather(inputs.embeddings()), eps=opts["eps"],
                                 n_clusters=opts["clusters"], seed=inputs.seed,
                                 n_iter=opts["iterations"], keep=opts["keep"])  # fmt: skip
    return filter_ranking(kept, inputs, params, info)
