"""Forward message passing (SPEC §1): every node gathers its neighbours' scores.

``g_i = s_i + Σ_{j∈N(i)} w_ij·max(s_j, eps)`` (mode ``product``: ``s_i · Σ…``) with
``w_ij = exp(−γf·d_ij)``. The summation order is part of the contract, so that the CUDA
kernel reproduces it bit for bit: per node, ``acc = 0.0``, then ``acc = acc + w[e]·max(s[j],
eps)`` for the edges in row order, in float64 without FMA, then ``s_i + acc`` (or ``s_i·acc``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from d2scale.backends import n_chunks_for, resolve_device, run_chunks
from d2scale.d2.weights import forward_weights
from d2scale.errors import D2ScaleError
from d2scale.params import check
from d2scale.types import CsrGraph

EPS = 1e-7


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
    check("mode", mode)
    check("gamma_forward", gamma_forward)
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    if scores.shape != (csr.n,):
        raise D2ScaleError(f"expected {csr.n} scores (one per node), got shape {scores.shape}.")
    return forward_on(resolve_device(device), csr, scores, gamma_forward, mode, eps)


def forward_on(
    device: str, csr: CsrGraph, scores: np.ndarray, gamma_forward: float, mode: str, eps=EPS
) -> np.ndarray:
    """The forward pass on a resolved ``device`` with checked arguments."""
    weights = forward_weights(csr, gamma_forward)
    if device == "cuda":
        from d2scale.d2._cuda import forward_scores_cuda

        return forward_scores_cuda(csr, scores, weights, mode, eps)
    out = np.empty(csr.n, dtype=np.float64)
    run_chunks(
        _forward_rows,
        csr.n,
        n_chunks_for(csr.n),
        np.asarray(csr.indptr, dtype=np.int64),
        np.asarray(csr.indices, dtype=np.int32),
        weights,
        scores,
        float(eps),
        mode == "product",
        out,
    )
    return out


@njit(cache=True, nogil=True)
def _forward_rows(lo, hi, c, indptr, indices, weights, scores, eps, product, out):
    for i in range(lo, hi):
        acc = 0.0
        for e in range(indptr[i], indptr[i + 1]):
            s = scores[indices[e]]
            acc = acc + weights[e] * (s if s > eps else eps)
        out[i] = scores[i] * acc if product else scores[i] + acc
