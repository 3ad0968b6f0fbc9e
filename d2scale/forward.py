"""Forward message passing (SPEC §1): every node gathers its neighbours' scores.

``g_i = s_i + Σ_{j∈N(i)} w_ij·max(s_j, eps)`` (mode ``product``: ``s_i · Σ…``) with
``w_ij = exp(−γf·d_ij)``. The summation order is part of the contract, so that the CUDA
kernel reproduces it bit for bit: per node, ``acc = 0.0``, then ``acc = acc + w[e]·max(s[j],
eps)`` for the edges in row order, in float64 without FMA, then ``s_i + acc`` (or ``s_i·acc``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from d2scale.errors import D2ScaleError
from d2scale.graph.symmetric import cpu_threads, n_chunks_for, run_chunks
from d2scale.types import CsrGraph

FORWARD_MODES = ("sum", "product")
DEVICES = ("cpu", "cuda", "auto")
EPS = 1e-7
WEIGHT_SLICE = 1 << 20  # elements per threaded slice of the weight computation


def forward_weights(csr: CsrGraph, gamma_forward: float) -> np.ndarray:
    """``exp(−γf·d)`` per edge, float64, computed by NumPy (the CPU and GPU paths share it).

    Same values as ``np.exp(-gamma_forward * d.astype(np.float64))``, computed in place
    to hold one float64 array instead of three.
    """
    return kernel_weights(csr.distances, gamma_forward)


def kernel_weights(distances: np.ndarray, gamma: float) -> np.ndarray:
    """``exp(−γ·d)`` as float64 in one array, element for element the same NumPy operations
    as ``np.exp(-gamma * d.astype(np.float64))``, in threads over slices of whole
    ``WEIGHT_SLICE`` elements (NumPy releases the GIL)."""
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


def forward_scores(
    csr: CsrGraph,
    scores: np.ndarray,
    *,
    gamma_forward: float = 1.0,
    mode: str = "sum",
    eps: float = EPS,
    device: str = "cpu",
) -> np.ndarray:
    """Forward scores ``g`` (float64[N]) of ``scores`` on the symmetrised graph ``csr``."""
    if mode not in FORWARD_MODES:
        raise D2ScaleError(f"the forward mode must be one of {FORWARD_MODES}; got {mode!r}.")
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    if scores.shape != (csr.n,):
        raise D2ScaleError(f"expected {csr.n} scores (one per node), got shape {scores.shape}.")
    weights = forward_weights(csr, gamma_forward)
    if resolve_device(device) == "cuda":
        from d2scale._cuda import forward_scores_cuda

        return forward_scores_cuda(csr, scores, weights, mode, eps)
    out = np.empty(csr.n, dtype=np.float64)
    indptr = np.asarray(csr.indptr, dtype=np.int64)
    indices = np.asarray(csr.indices, dtype=np.int32)
    run_chunks(
        _forward_rows,
        csr.n,
        n_chunks_for(csr.n),
        indptr,
        indices,
        weights,
        scores,
        float(eps),
        mode == "product",
        out,
    )
    return out


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"cuda"``; ``"auto"`` is CUDA where :mod:`d2scale._cuda` sees a GPU."""
    if device not in DEVICES:
        raise D2ScaleError(f"device must be one of {DEVICES}; got {device!r}.")
    if device != "auto":
        return device
    try:
        from d2scale._cuda import cuda_available
    except ImportError:
        return "cpu"
    return "cuda" if cuda_available() else "cpu"


@njit(cache=True, nogil=True)
def _forward_rows(lo, hi, c, indptr, indices, weights, scores, eps, product, out):
    for i in range(lo, hi):
        acc = 0.0
        for e in range(indptr[i], indptr[i + 1]):
            s = scores[indices[e]]
            acc = acc + weights[e] * (s if s > eps else eps)
        out[i] = scores[i] * acc if product else scores[i] + acc
