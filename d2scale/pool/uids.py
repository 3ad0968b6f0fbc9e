"""DataComp uids: up to 32 hex digits ↔ the ``np.dtype("u8,u8")`` subset-file encoding.

Accepted spellings (SPEC §2): 1–32 hexadecimal digits, upper or lower case; shorter uids are
left-padded with ``0``. Accepted column types: ``string``, ``large_string``, ``string_view``
and dictionary-encoded strings.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from d2scale.errors import D2ScaleError

UID_DTYPE = np.dtype("<u8,<u8")
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

# byte value -> nibble, 255 for anything that is not a hex digit
_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _NIBBLE[_c] = 10 + _i


def not_null(arr: pa.Array) -> np.ndarray:
    """Per element of ``arr``, whether it is not null, from its validity bitmap (pyarrow's
    own conversions to NumPy import pandas: 0.4 s of a small select's start-up)."""
    n = len(arr)
    if arr.null_count == 0:
        return np.ones(n, dtype=bool)
    bits = np.frombuffer(arr.buffers()[0], dtype=np.uint8)
    return np.unpackbits(bits, bitorder="little")[arr.offset : arr.offset + n].astype(bool)


def uid_text(uids, *, where: str = "input") -> pa.Array:
    """The uids as one (unchunked) pyarrow ``string`` array; other types are a D2ScaleError."""
    if isinstance(uids, (pa.Array, pa.ChunkedArray)):
        arr = uids
    else:
        try:
            arr = pa.array(list(uids), pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise D2ScaleError(f"{where}: uids must be strings") from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    stringlike = (pa.types.is_string, pa.types.is_large_string, _is_string_view)
    if not any(test(arr.type) for test in stringlike):
        raise D2ScaleError(f"{where}: the uid column must hold strings, found {arr.type}")
    return arr if arr.type == pa.string() else arr.cast(pa.string())


def _is_string_view(t: pa.DataType) -> bool:
    return hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)


def encode_uids(uids, *, where: str = "input") -> np.ndarray:
    """Encode uid strings as ``(int(uid[:16], 16), int(uid[16:32], 16))`` records.

    Accepts a pyarrow array (see :func:`uid_text` for the types), a NumPy array or a list of
    str. Null, empty, over-long or non-hex uids raise a :class:`D2ScaleError` naming
    ``where`` and the first bad row.
    """
    arr = uid_text(uids, where=where).cast(pa.large_string())  # int64 offsets below
    n = len(arr)
    if n == 0:
        return np.empty(0, dtype=UID_DTYPE)
    present = not_null(arr)
    lengths = pc.utf8_length(arr)
    chars = np.frombuffer(lengths.buffers()[1], np.int64, count=n, offset=8 * lengths.offset)
    chars = np.where(present, chars, 0)
    padded = pc.utf8_lpad(arr, 32, "0")
    offs = np.frombuffer(padded.buffers()[1], np.int64, count=n + 1, offset=8 * padded.offset)
    valid = (chars >= 1) & (chars <= 32) & (np.diff(offs) == 32)  # 32 bytes: all ASCII
    valid &= present
    first_bad = int(np.argmin(valid)) if not valid.all() else n
    data = padded.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    nib = _NIBBLE[raw[offs[0] : offs[0] + 32 * first_bad]].reshape(first_bad, 32)
    not_hex = np.flatnonzero((nib == 255).any(axis=1))
    if not_hex.size or first_bad < n:
        _raise_bad_uid(arr, int(not_hex[0]) if not_hex.size else first_bad, where)
    weights = (np.uint64(16) ** np.arange(15, -1, -1, dtype=np.uint64)).astype(np.uint64)
    nib64 = nib.astype(np.uint64)
    out = np.empty(n, dtype=UID_DTYPE)
    out["f0"] = nib64[:, :16] @ weights
    out["f1"] = nib64[:, 16:] @ weights
    return out


def _raise_bad_uid(arr: pa.Array, row: int, where: str):
    value = arr[row].as_py()
    if value is None:
        raise D2ScaleError(f"{where}, row {row}: the uid is missing (null)")
    raise D2ScaleError(
        f"{where}, row {row}: malformed uid {value!r} (expected 1 to 32 hexadecimal characters)"
    )


def canonical_text(encoded: np.ndarray) -> pa.Array:
    """32 lower-case hex digits per encoded uid, as a pyarrow ``string`` array (vectorised)."""
    n = encoded.shape[0]
    both = np.empty((n, 2), dtype=">u8")
    both[:, 0] = encoded["f0"]
    both[:, 1] = encoded["f1"]
    octets = both.view(np.uint8).reshape(n, 16)
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[octets >> 4]
    digits[:, 1::2] = _HEX_DIGITS[octets & 15]
    kind, width = (pa.string(), np.int32) if 32 * n < 2**31 else (pa.large_string(), np.int64)
    offsets = np.arange(0, 32 * n + 1, 32, dtype=width)
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(digits)])


def decode_uids(arr: np.ndarray) -> list[str]:
    """Inverse of :func:`encode_uids`: 32 lowercase hex chars per record."""
    return canonical_text(np.asarray(arr)).to_pylist()


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
