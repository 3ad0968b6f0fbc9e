"""Edge weights of message passing: ``exp(−γ·d)`` as float64 (the CPU and GPU paths share
them, so both see the same bits)."""

from __future__ import annotations

import numpy as np

from d2scale.backends import cpu_threads, run_chunks
from d2scale.types import CsrGraph

WEIGHT_SLICE = 1 << 20  # elements per threaded slice of the weight computation


def kernel_weights(distances: np.ndarray, gamma: float) -> np.ndarray:
    """``exp(−γ·d)`` as float64 in one array, element for element the same NumPy operations
    as ``np.exp(-gamma * d.astype(np.float64))``, in threads over slices of whole
    ``WEIGHT_SLICE`` elements (NumPy releases the GIL), holding one array instead of three."""
    w = np.empty(distances.shape, dtype=np.float64)
    flat_d, flat_w = distances.reshape(-1), w.reshape(-1)
    n_slices = -(-flat_w.size // WEIGHT_SLICE)

    def fill(lo: int, hi: int, _: int) -> None:
        part = flat_w[lo * WEIGHT_SLICE : hi * WEIGHT_SLICE]
        part[:] = flat_d[lo * WEIGHT_SLICE : hi * WEIGHT_SLICE]
        np.multiply(part, -gamma, out=part)
        np.exp(part, out=part)

    run_chunks(fill, n_slices, max(1, min(n_slices, cpu_threads())))
    return w


def forward_weights(csr: CsrGraph, gamma_forward: float) -> np.ndarray:
    """Per-edge forward weights ``exp(−γf·d)``."""
    return kernel_weights(csr.distances, gamma_forward)


def reverse_weights(csr: CsrGraph, gamma: float, sampling: str = "weighted") -> np.ndarray:
    """Per-edge update weights: ``exp(−γr·d)`` (weighted) or ones (absolute)."""
    if sampling == "absolute":
        return np.ones(csr.n_edges, dtype=np.float64)
    return kernel_weights(csr.distances, gamma)
