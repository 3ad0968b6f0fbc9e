"""The two files of one pool shard, read in a bounded number of bytes.

:func:`inspect_shard` gives a shard's row count (parquet footer), the shape and dtype of
every npz member (zip directory and ``.npy`` headers, nothing else of the arrays) and a
content digest. Every embedding member (``<model>_img``/``<model>_txt``: ``l14``, ``b32``
or another prefix, e.g. from ``d2scale embed``) must be a 2-D float array with one row per
parquet row; ``l14`` and ``b32`` members must also have their model's width.

The digest covers:

- every npz member completely, through the CRC-32 of its uncompressed bytes that the zip
  directory stores (any changed embedding changes it, whatever the file size);
- the parquet footer (row groups, column offsets and sizes, statistics, schema) and the
  ``uid`` column's pages: whole up to ``UID_BYTES``, else seeded windows of them;
- seeded windows of both files, their sizes, and the ETag or modification time where the
  filesystem gives one.

Bytes read per shard are bounded (about ``UID_BYTES`` + 0.5 MiB, whatever the shard size),
so fingerprinting a 12.8M-row pool on an object store costs a few hundred MB of range reads
in parallel, not the 40 GB of its embeddings.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2scale.errors import D2ScaleError

EMBEDDING_DIMS = {"l14": 768, "b32": 512}
EMBEDDING_MEMBER = re.compile(r"^([a-z0-9]+)_(img|txt)$")
FLOAT_DTYPES = ("float16", "float32", "float64")
# what reading an npz can raise on a damaged file (zlib.error: a bad deflate stream;
# BadZipFile: a bad CRC or directory; EOFError/ValueError: truncated or malformed .npy)
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zlib.error, zipfile.BadZipFile)

BLOCK = 64 * 1024  # read-ahead block of remote files: keeps every small read small
WINDOW = 16 * 1024  # one sampled byte window
FILE_WINDOWS = 4  # sampled windows per file
UID_BYTES = 256 * 1024  # uid pages read whole up to this size, sampled above it
_STAMPS = ("ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "last_modified")


@dataclass(frozen=True)
class Member:
    """One ``.npy`` member of an npz: its key, shape, NumPy dtype string and whether it is
    deflated (each read then inflates it up to the last row wanted)."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    deflated: bool = False


@dataclass(frozen=True)
class ShardFacts:
    rows: int
    members: tuple[Member, ...]
    digest: str


def inspect_shard(fs, name: str, parquet: dict, npz: dict) -> ShardFacts:
    """Facts and content digest of one pair; ``parquet``/``npz`` are fsspec info dicts."""
    h = hashlib.sha256(name.encode())
    rows = _parquet_facts(fs, parquet, h)
    members = _npz_facts(fs, npz, h)
    for member in members:
        check_member(member, rows, parquet["name"], npz["name"])
    return ShardFacts(rows, members, h.hexdigest())


def check_member(member: Member, rows: int, parquet: str, npz: str) -> None:
    """Refuse an embedding member that is not a (rows × width) float array, or (l14, b32)
    whose width is not its model's."""
    match = EMBEDDING_MEMBER.match(member.key)
    if match is None:
        return
    key, shape, dim = member.key, member.shape, EMBEDDING_DIMS.get(match.group(1))
    dtype = np.dtype(member.dtype)
    if len(shape) != 2:
        raise D2ScaleError(
            f"{npz}: array {key!r} must be 2-D (rows × {dim or 'width'}), has shape {shape}"
        )
    if dtype.name not in FLOAT_DTYPES:
        raise D2ScaleError(
            f"{npz}: array {key!r} holds {dtype.name} values; embeddings must be "
            f"{', '.join(FLOAT_DTYPES)}"
        )
    if shape[0] != rows:
        raise D2ScaleError(
            f"row-count mismatch: {npz} array {key!r} has {shape[0]} rows but {parquet} has {rows}"
        )
    if dim is not None and shape[1] != dim:
        raise D2ScaleError(
            f"{npz}: array {key!r} has {shape[1]} dimensions but {match.group(1)} "
            f"embeddings have {dim} (another model's embeddings under this name?)"
        )


# -- parquet ---------------------------------------------------------------------------


def _parquet_facts(fs, info: dict, h) -> int:
    path, size = info["name"], int(info["size"])
    _stamp(info, h)
    try:
        with fs.open(path, "rb", block_size=BLOCK) as f:
            md = pq.ParquetFile(f).metadata
            footer = md.serialized_size + 8  # thrift footer, its length, b"PAR1"
            ranges = [(size - footer, footer), *_uid_ranges(md), *_windows(size)]
            _hash_ranges(f, ranges, h)
    except (OSError, pa.ArrowException) as e:
        raise D2ScaleError(f"cannot read parquet file {path}: {e}") from None
    return md.num_rows


def _uid_ranges(md: pq.FileMetaData) -> list[tuple[int, int]]:
    """Byte ranges of the ``uid`` column's pages: all, or seeded windows over them."""
    chunks = []
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            if col.path_in_schema == "uid":
                start = col.data_page_offset
                if col.has_dictionary_page and col.dictionary_page_offset is not None:
                    start = min(start, col.dictionary_page_offset)
                chunks.append((start, col.total_compressed_size))
    total = sum(n for _, n in chunks)
    if total <= UID_BYTES:
        return chunks
    ends = np.cumsum([n for _, n in chunks])
    picks = np.sort(np.random.default_rng([total, 1]).integers(0, total, UID_BYTES // WINDOW))
    out = []
    for at in picks.tolist():  # a position in the concatenated pages → (chunk, offset)
        i = int(np.searchsorted(ends, at, side="right"))
        start, n = chunks[i]
        local = at - (int(ends[i]) - n)
        out.append((start + local, min(WINDOW, n - local)))
    return out


# -- npz -------------------------------------------------------------------------------


def _npz_facts(fs, info: dict, h) -> tuple[Member, ...]:
    path, size = info["name"], int(info["size"])
    _stamp(info, h)
    try:
        with fs.open(path, "rb", block_size=BLOCK) as f:
            _hash_ranges(f, _windows(size), h)
            with zipfile.ZipFile(f) as z:
                entries = z.infolist()
                for e in entries:
                    h.update(f"{e.filename}:{e.CRC}:{e.file_size}:{e.compress_type}".encode())
                return tuple(_member(z, e) for e in entries if e.filename.endswith(".npy"))
    except NPZ_ERRORS as e:
        raise D2ScaleError(f"cannot read embeddings from {path}: {_describe(e)}") from None


def _member(z: zipfile.ZipFile, entry: zipfile.ZipInfo) -> Member:
    fmt = np.lib.format
    with z.open(entry) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"{entry.filename} has unsupported .npy format {version}")
    return Member(entry.filename[: -len(".npy")], tuple(int(s) for s in shape), dtype.str,
                  entry.compress_type != zipfile.ZIP_STORED)  # fmt: skip


def _describe(e: BaseException) -> str:
    if isinstance(e, zlib.error):
        return f"damaged compressed data ({e})"
    if isinstance(e, zipfile.BadZipFile):
        return f"not a complete zip/npz file ({e})"
    return str(e) or type(e).__name__


# -- sampling --------------------------------------------------------------------------


def _windows(size: int) -> list[tuple[int, int]]:
    """``FILE_WINDOWS`` windows at offsets seeded by the file size (the whole of a small file)."""
    if size <= FILE_WINDOWS * WINDOW:
        return [(0, size)]
    starts = np.random.default_rng([size, 0]).integers(0, size - WINDOW, FILE_WINDOWS)
    return [(int(s), WINDOW) for s in np.sort(starts)]


def _hash_ranges(f, ranges: list[tuple[int, int]], h) -> None:
    for start, length in ranges:
        f.seek(start)
        data = f.read(length)
        if len(data) != length:
            raise EOFError(f"file ends at byte {start + len(data)}, expected {start + length}")
        h.update(data)


def _stamp(info: dict, h) -> None:
    """Size and, where the filesystem gives them, ETag/checksum and modification time."""
    stamp = {k: str(info[k]) for k in _STAMPS if info.get(k) is not None}
    h.update(f"{int(info['size'])}:{sorted(stamp.items())}".encode())
