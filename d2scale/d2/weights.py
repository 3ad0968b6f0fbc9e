"""Edge weights of message passing: ``exp(−γ·d)`` as float64 (the CPU and GPU paths share
them, so both see the same bits).

Why float64, not float32: the weight enters the reverse update ``g_v − w·g_u`` and the
forward sum in float64. NumPy's float64 ``exp`` result is almost never a float32 value, so
a float32 copy would change the products' bits, and with them the order wherever two
scores are close (the oracle's order is the contract). A weight is also not recomputed
inside the compiled kernels: their ``exp`` (the C library's) and NumPy's (SIMD) differ in
the last bit for a few percent of inputs on AVX-512 machines. So every weight is NumPy's
value, stored once: ``weights_in_place`` writes them over the float32 distances of a graph
symmetrised with ``weight_room`` (8 bytes per edge in all, not 4 + 8 + 8), and the forward
pass computes its own weights in slices (:mod:`d2scale.d2.forward`). Only ``absolute``
sampling, whose weights are all exactly 1, keeps no array.
"""

from __future__ import annotations

import numpy as np

from d2scale.backends import cpu_threads, run_chunks
from d2scale.types import CsrGraph

WEIGHT_SLICE = 1 << 18  # elements per threaded slice of the weight computation


def kernel_weights(distances: np.ndarray, gamma: float) -> np.ndarray:
    """``exp(−γ·d)`` as float64 in one array, element for element the same NumPy operations
    as ``np.exp(-gamma * d.astype(np.float64))``, in threads over slices of whole
    ``WEIGHT_SLICE`` elements (NumPy releases the GIL), holding one array instead of three."""
    w = np.empty(distances.shape, dtype=np.float64)
    flat_d, flat_w = distances.reshape(-1), w.reshape(-1)
    n_slices = -(-flat_w.size // WEIGHT_SLICE)

    def fill(lo: int, hi: int, _: int) -> None:
        part = flat_w[lo * WEIGHT_SLICE : hi * WEIGHT_SLICE]
        exp_weights(flat_d[lo * WEIGHT_SLICE : hi * WEIGHT_SLICE], gamma, part)

    run_chunks(fill, n_slices, max(1, min(n_slices, cpu_threads())))
    return w


def exp_weights(distances: np.ndarray, gamma: float, out: np.ndarray) -> np.ndarray:
    """``out[:] = exp(−γ·float64(d))``: the one expression every weight comes from."""
    out[:] = distances
    np.multiply(out, -gamma, out=out)
    return np.exp(out, out=out)


def weights_in_place(csr: CsrGraph, gamma: float) -> np.ndarray:
    """The weights ``exp(−γ·d)`` of ``csr``'s edges, the same bits as :func:`kernel_weights`.

    When ``csr`` comes from ``symmetrize(..., weight_room=True)`` they are written over its
    distances (the float64 array whose upper half holds them), which are gone afterwards;
    otherwise they are a new array. Weight ``e`` overwrites the float32 slots ``2e, 2e+1``,
    which hold the distances ``2e − E`` and ``2e + 1 − E``: positions ``< e``. Rounds that
    each convert the first half of what is left therefore only overwrite distances an
    earlier round has read; inside a round, slices run in threads.
    """
    room = _room(csr.distances)
    if room is None:
        return kernel_weights(csr.distances, gamma)
    d = csr.distances
    n = d.shape[0]
    lo = 0
    while n - lo > WEIGHT_SLICE:
        hi = (lo + n) // 2
        _convert_round(d, room, lo, hi, gamma)
        lo = hi
    room[lo:] = exp_weights(d[lo:], gamma, np.empty(n - lo))  # read all before writing
    return room


def _convert_round(d: np.ndarray, room: np.ndarray, lo: int, hi: int, gamma: float) -> None:
    n_slices = -(-(hi - lo) // WEIGHT_SLICE)

    def fill(s0: int, s1: int, _: int) -> None:
        for s in range(s0, s1):
            a, b = lo + s * WEIGHT_SLICE, min(hi, lo + (s + 1) * WEIGHT_SLICE)
            room[a:b] = exp_weights(d[a:b], gamma, np.empty(b - a))

    run_chunks(fill, n_slices, max(1, min(n_slices, cpu_threads())))


def _room(d: np.ndarray) -> np.ndarray | None:
    """The float64 array whose upper half ``d`` is, if it is one (see ``weight_room``)."""
    room = d.base
    if not (
        isinstance(room, np.ndarray)
        and room.dtype == np.float64
        and room.ndim == 1
        and room.shape[0] == d.shape[0]
        and room.flags.c_contiguous
        and room.flags.writeable
        and d.dtype == np.float32
        and d.flags.c_contiguous
    ):
        return None
    start = room.__array_interface__["data"][0] + 4 * d.shape[0]
    return room if d.__array_interface__["data"][0] == start else None


def forward_weights(csr: CsrGraph, gamma_forward: float) -> np.ndarray:
    """Per-edge forward weights ``exp(−γf·d)``."""
    return kernel_weights(csr.distances, gamma_forward)


def reverse_weights(csr: CsrGraph, gamma: float, sampling: str = "weighted") -> np.ndarray:
    """Per-edge update weights: ``exp(−γr·d)`` (weighted) or ones (absolute)."""
    if sampling == "absolute":
        return np.ones(csr.n_edges, dtype=np.float64)
    return kernel_weights(csr.distances, gamma)


def unit_weights(n_edges: int) -> np.ndarray:
    """``absolute`` sampling's weights: ``n_edges`` ones as a read-only broadcast (no
    memory). ``g − 1.0·x`` and ``g − x`` are the same float64 operation."""
    return np.broadcast_to(np.float64(1.0), (n_edges,))
