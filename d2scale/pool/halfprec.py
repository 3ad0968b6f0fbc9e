"""Fast, exact float16 → float32 conversion, and the rows' normalisation to unit length.

numpy converts float16 one element at a time (~5 ns each here), which made reading the
float16 embeddings DataComp stores a large share of a graph build; this compiled bit-level
conversion is 10–20× faster and bit-identical to numpy's for every one of the 65,536 halves
(NaNs stay NaNs, signs and subnormals included; tested exhaustively).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _as_float32(typingctx, bits):
    """Reinterpret uint32 bits as a float32 (LLVM bitcast)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _half(bits):
    """The float32 value of the float16 with these bits (exact)."""
    x = np.uint32(bits)
    em = x & np.uint32(0x7FFF)  # exponent and mantissa
    if em >= np.uint32(0x7C00):  # inf, NaN: all exponent bits set
        v = _as_float32(np.uint32(0x7F800000) | ((em & np.uint32(0x3FF)) << np.uint32(13)))
    elif em >= np.uint32(0x0400):  # normal: rebias the exponent (127 − 15 = 112)
        v = _as_float32((em + np.uint32(0x1C000)) << np.uint32(13))
    else:  # zero or subnormal: exactly em · 2⁻²⁴
        v = np.float32(em) * np.float32(2.0**-24)
    return -v if x & np.uint32(0x8000) else v


@njit(cache=True, nogil=True)
def _convert(h, out):
    for i in range(h.shape[0]):
        out[i] = _half(h[i])


@njit(cache=True, nogil=True, inline="always")
def _widen(x, i, half, row):
    """Row ``i`` of ``x`` (float16 bits when ``half``) as float64 into ``row``."""
    if half:
        for j in range(x.shape[1]):
            row[j] = np.float64(_half(x[i, j]))
    else:
        for j in range(x.shape[1]):
            row[j] = np.float64(x[i, j])


@njit(cache=True, nogil=True, inline="always")
def _norm(row):
    """The float64 norm of ``row``: squares summed in a fixed order (four interleaved
    partial sums), so the value does not depend on the CPU."""
    cols = row.shape[0]
    s0 = s1 = s2 = s3 = 0.0
    j = 0
    while j + 4 <= cols:
        s0 += row[j] * row[j]
        s1 += row[j + 1] * row[j + 1]
        s2 += row[j + 2] * row[j + 2]
        s3 += row[j + 3] * row[j + 3]
        j += 4
    while j < cols:
        s0 += row[j] * row[j]
        j += 1
    return np.sqrt((s0 + s1) + (s2 + s3))


@njit(cache=True, nogil=True)
def _unit_rows(x, out, half):
    """Rows of ``x`` (float16 bits when ``half``) divided by their float64 norm into ``out``;
    the first row whose norm is zero or not finite, or -1."""
    row = np.empty(x.shape[1], np.float64)
    for i in range(x.shape[0]):
        _widen(x, i, half, row)
        norm = _norm(row)
        if not (norm > 0.0 and norm < np.inf):
            return i
        for j in range(x.shape[1]):
            out[i, j] = np.float32(row[j] / norm)
    return -1


@njit(cache=True, nogil=True)
def _half_norms(h, norms):
    row = np.empty(h.shape[1], np.float64)
    for i in range(h.shape[0]):
        _widen(h, i, True, row)
        norms[i] = _norm(row)


@njit(cache=True, nogil=True)
def _scaled_halves(h, norms, out):
    for i in range(h.shape[0]):
        norm = norms[i]
        for j in range(h.shape[1]):
            out[i, j] = np.float32(np.float64(_half(h[i, j])) / norm)


def half_norms(h: np.ndarray) -> np.ndarray:
    """The float64 norms :func:`unit_rows` divides the float16 rows ``h`` by."""
    h = np.ascontiguousarray(h.astype(h.dtype.newbyteorder("="), copy=False)).view(np.uint16)
    norms = np.empty(h.shape[0])
    if h.shape[0]:
        _half_norms(h, norms)
    return norms


def scaled_halves(h: np.ndarray, norms: np.ndarray, out: np.ndarray) -> None:
    """float16 rows ``h`` divided by ``norms`` (from :func:`half_norms`) into ``out``
    (float32): bit-identical to :func:`unit_rows` of ``h``."""
    if h.shape[0]:
        _scaled_halves(np.ascontiguousarray(h).view(np.uint16), norms, out)


def unit_rows(x: np.ndarray, out: np.ndarray) -> int:
    """``x``'s rows (any real dtype) at unit length as float32 into ``out`` (same shape; may
    be a column slice); returns the first row whose norm is zero or not finite, or -1 (rows
    from there on are not written)."""
    if x.shape[0] == 0:
        return -1
    if not x.dtype.isnative:  # e.g. big-endian members: the compiled code reads native order
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype == np.float16:
        return int(_unit_rows(np.ascontiguousarray(x).view(np.uint16), out, True))
    return int(_unit_rows(np.asarray(x), out, False))


def to_float32(a: np.ndarray) -> np.ndarray:
    """``a`` as a new C-contiguous float32 array (float16 input: the fast exact path)."""
    a = np.asarray(a)
    if a.dtype != np.float16:
        return np.array(a, dtype=np.float32, order="C")
    h = np.ascontiguousarray(a).view(np.uint16)
    out = np.empty(a.shape, dtype=np.float32)
    if a.size:
        _convert(h.reshape(-1), out.reshape(-1))
    return out
