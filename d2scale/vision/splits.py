"""Shared split and batching helpers of the vision datasets."""

from __future__ import annotations

import numpy as np
import torch

from d2scale.errors import D2ScaleError

SPLIT_SEED = 0  # fixes the train/held-out and val/test splits of every dataset


def holdout_halves(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(val, test) positions: a seeded half of each class (the smaller half when odd) and
    the rest, each sorted."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[: len(members) // 2])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    return val, np.setdiff1d(np.arange(len(labels)), val)


def index_tensor(indices: np.ndarray | None, n: int, device: torch.device) -> torch.Tensor:
    if indices is None:
        return torch.arange(n, device=device)
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
        raise D2ScaleError(f"sample indices must be a 1-D array of ids in [0, {n}).")
    return torch.from_numpy(idx.astype(np.int64)).to(device)


def chunks(idx: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Split into ceil(n / batch_size) near-equal batches (sizes differ by at most one)."""
    n_batches = -(-len(idx) // batch_size)
    return torch.tensor_split(idx, n_batches) if n_batches else ()
