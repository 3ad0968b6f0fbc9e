"""Random selection: a seeded permutation of the rows, the baseline every method must beat."""

from __future__ import annotations

import numpy as np


def random_order(n: int, seed: int) -> np.ndarray:
    """All ``n`` rows in a random order (int64) drawn from ``default_rng(seed)``; every
    prefix is a uniform random subset of its size."""
    if n < 0:
        raise ValueError(f"n must be ≥ 0; got {n}")
    return np.random.default_rng(seed).permutation(n).astype(np.int64)
