"""DataComp uids: 32 lowercase hex chars ↔ the ``np.dtype("u8,u8")`` subset-file encoding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from d2scale.errors import D2ScaleError

UID_DTYPE = np.dtype("<u8,<u8")

# byte value -> nibble, 255 for anything that is not a hex digit
_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _NIBBLE[_c] = 10 + _i


def encode_uids(uids, *, where: str = "input") -> np.ndarray:
    """Encode uid strings as ``(int(uid[:16], 16), int(uid[16:32], 16))`` records.

    Accepts a pyarrow array, a NumPy array or a list of str. Shorter uids are left-padded with
    ``0`` and upper-case hex is accepted; null, empty, over-long or non-hex uids raise a
    :class:`D2ScaleError` naming ``where`` and the first bad row.
    """
    arr = uids if isinstance(uids, (pa.Array, pa.ChunkedArray)) else pa.array(list(uids))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        raise D2ScaleError(f"{where}: the uid column must hold strings, found {arr.type}")
    n = len(arr)
    lengths = pc.fill_null(pc.utf8_length(arr), 0).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((lengths == 0) | (lengths > 32))
    if bad.size == 0:
        padded = pc.utf8_lpad(arr, 32, "0")
        raw = np.frombuffer(
            padded.buffers()[2], dtype=np.uint8, count=32 * n, offset=32 * padded.offset
        )
        offs = np.frombuffer(
            padded.buffers()[1], dtype=np.int32, count=n + 1, offset=4 * padded.offset
        )
        if n and (offs[-1] - offs[0] != 32 * n):  # multi-byte characters
            bad = np.flatnonzero(np.diff(offs) != 32)
        else:
            nib = _NIBBLE[raw[offs[0] : offs[0] + 32 * n]].reshape(n, 32)
            bad = np.flatnonzero((nib == 255).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise D2ScaleError(
            f"{where}, row {i}: malformed uid {arr[i].as_py()!r} "
            "(expected up to 32 hexadecimal characters)"
        )
    weights = (np.uint64(16) ** np.arange(15, -1, -1, dtype=np.uint64)).astype(np.uint64)
    nib64 = nib.astype(np.uint64)
    out = np.empty(n, dtype=UID_DTYPE)
    out["f0"] = nib64[:, :16] @ weights
    out["f1"] = nib64[:, 16:] @ weights
    return out


def decode_uids(arr: np.ndarray) -> list[str]:
    """Inverse of :func:`encode_uids`: 32 lowercase hex chars per record."""
    return [f"{int(a):016x}{int(b):016x}" for a, b in zip(arr["f0"], arr["f1"], strict=True)]


def check_unique(encoded: np.ndarray, *, where: str = "pool") -> None:
    """Raise if any uid occurs twice (names one duplicate and the count)."""
    s = np.sort(encoded)
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        first = decode_uids(s[dup[:1]])[0]
        raise D2ScaleError(f"duplicate uid {first} in {where} ({dup.size} repeated rows in all)")


def subset_array(encoded: np.ndarray) -> np.ndarray:
    """The DataComp subset-file array: dtype ``u8,u8`` (little-endian), sorted, no duplicates."""
    arr = np.asarray(encoded).astype(UID_DTYPE, copy=True)
    arr.sort()
    if arr.size > 1 and np.any(arr[1:] == arr[:-1]):
        raise D2ScaleError("selected uids contain duplicates")
    return arr
