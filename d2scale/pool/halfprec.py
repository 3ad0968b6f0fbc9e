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


@njit(cache=True, nogil=True)
def _unit_rows(x, out, half):
    """Rows of ``x`` (float16 bits when ``half``) divided by their float64 norm into ``out``;
    the first row whose norm is zero or not finite, or -1. The squares are summed in a fixed
    order (four interleaved float64 partial sums), so the values do not depend on the CPU."""
    cols = x.shape[1]
    row = np.empty(cols, np.float64)
    for i in range(x.shape[0]):
        if half:
            for j in range(cols):
                row[j] = np.float64(_half(x[i, j]))
        else:
            for j in range(cols):
                row[j] = np.float64(x[i, j])
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
        norm = np.sqrt((s0 + s1) + (s2 + s3))
        if not (norm > 0.0 and norm < np.inf):
            return i
        for j in range(cols):
            out[i, j] = np.float32(row[j] / norm)
    return -1


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
