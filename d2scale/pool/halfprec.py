"""Fast, exact float16 → float32 conversion.

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


@njit(cache=True, nogil=True)
def _convert(h, out):
    tiny = np.float32(2.0**-24)  # the unit of a subnormal half
    for i in range(h.shape[0]):
        x = np.uint32(h[i])
        em = x & np.uint32(0x7FFF)  # exponent and mantissa
        if em >= np.uint32(0x7C00):  # inf, NaN: all exponent bits set
            v = _as_float32(np.uint32(0x7F800000) | ((em & np.uint32(0x3FF)) << np.uint32(13)))
        elif em >= np.uint32(0x0400):  # normal: rebias the exponent (127 − 15 = 112)
            v = _as_float32((em + np.uint32(0x1C000)) << np.uint32(13))
        else:  # zero or subnormal: exactly em · 2⁻²⁴
            v = np.float32(em) * tiny
        out[i] = -v if x & np.uint32(0x8000) else v


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
