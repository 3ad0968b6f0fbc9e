"""Forward message passing (SPEC §1): every node gathers its neighbours' scores.

``g_i = s_i + Σ_{j∈N(i)} w_ij·max(s_j, eps)`` (mode ``product``: ``s_i · Σ…``) with
``w_ij = exp(−γf·d_ij)``. The summation order is part of the contract, so that the CUDA
kernel reproduces it bit for bit: per node, ``acc = 0.0``, then ``acc = acc + w[e]·max(s[j],
eps)`` for the edges in row order, in float64 without FMA, then ``s_i + acc`` (or ``s_i·acc``).

On the CPU the weights are computed slice by slice of rows, each slice's just before its
rows are summed (no array of all weights), unless the caller has them already (the
reverse pass's, when ``γf = γr``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from d2scale.backends import n_chunks_for, resolve_device, run_chunks
from d2scale.d2._prefetch import prefetch
from d2scale.d2.weights import WEIGHT_SLICE, exp_weights, forward_weights
from d2scale.errors import D2ScaleError
from d2scale.params import check
from d2scale.types import CsrGraph

EPS = 1e-7
PREFETCH_EDGES = 48  # how far ahead the forward pass prefetches a neighbour's score


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
    device: str,
    csr: CsrGraph,
    scores: np.ndarray,
    gamma_forward: float,
    mode: str,
    eps=EPS,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """The forward pass on a resolved ``device`` with checked arguments; ``weights``: the
    edges' ``exp(−γf·d)`` when the caller holds them already."""
    if device == "cuda":
        from d2scale.d2._cuda import forward_scores_cuda

        weights = forward_weights(csr, gamma_forward) if weights is None else weights
        return forward_scores_cuda(csr, scores, weights, mode, eps)
    out = np.empty(csr.n, dtype=np.float64)
    indptr = np.asarray(csr.indptr, dtype=np.int64)
    indices = np.asarray(csr.indices, dtype=np.int32)
    args = (scores, float(eps), mode == "product", out)
    if weights is not None:
        run_chunks(_forward_rows, csr.n, n_chunks_for(csr.n), indptr, indices, weights, 0, *args)
        return out

    def rows_in_slices(lo: int, hi: int, _: int) -> None:
        while lo < hi:  # rows lo..top hold about WEIGHT_SLICE edges (at least one row)
            top = min(hi, max(lo + 1, int(np.searchsorted(indptr, indptr[lo] + WEIGHT_SLICE))))
            e0, e1 = int(indptr[lo]), int(indptr[top])
            w = exp_weights(csr.distances[e0:e1], gamma_forward, np.empty(e1 - e0))
            _forward_rows(lo, top, 0, indptr, indices, w, e0, *args)
            lo = top

    run_chunks(rows_in_slices, csr.n, n_chunks_for(csr.n))
    return out


@njit(cache=True, nogil=True)
def _forward_rows(lo, hi, c, indptr, indices, weights, w_start, scores, eps, product, out):
    """Rows lo..hi; ``weights[e - w_start]`` is edge e's weight. The neighbours' scores are
    read at random: each is prefetched ``PREFETCH_EDGES`` edges ahead (no value changes;
    1.7× faster at 12.8M nodes, whose scores do not fit the CPU's private caches)."""
    last = indptr[hi] - 1
    for i in range(lo, hi):
        acc = 0.0
        for e in range(indptr[i], indptr[i + 1]):
            prefetch(scores, indices[min(e + PREFETCH_EDGES, last)])
            s = scores[indices[e]]
            acc = acc + weights[e - w_start] * (s if s > eps else eps)
        out[i] = scores[i] * acc if product else scores[i] + acc
