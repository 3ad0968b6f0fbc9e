"""Read a DataComp metadata pool: ``<name>.parquet`` + ``<name>.npz`` pairs, local or fsspec.

Row ``i`` of a parquet file is row ``i`` of every array in the npz of the same base name.
Pool order is: files sorted by name, rows in file order. Each pair is one Dask partition.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2scale.errors import D2ScaleError

EMBEDDING_MODELS = ("l14", "b32")
FEATURE_TYPES = ("image", "text", "image_text")
_FEATURE_SUFFIXES = {"image": ("img",), "text": ("txt",), "image_text": ("img", "txt")}
_DIMS = {"l14": 768, "b32": 512}


@dataclass(frozen=True)
class Shard:
    """One parquet/npz pair of the pool."""

    name: str
    parquet: str
    npz: str
    rows: int
    offset: int


@dataclass
class Pool:
    """An opened metadata directory: its filesystem and its shards in pool order."""

    url: str
    fs: fsspec.AbstractFileSystem = field(repr=False)
    shards: list[Shard]
    fingerprint: str

    @property
    def n(self) -> int:
        return sum(s.rows for s in self.shards)


def open_pool(url: str) -> Pool:
    """List and pair the files of a metadata directory, read row counts from parquet footers."""
    fs, root = fsspec.core.url_to_fs(url)
    try:
        if not fs.isdir(root):
            raise D2ScaleError(f"metadata directory {url} does not exist")
        entries = fs.ls(root, detail=True)
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot list metadata directory {url}: {e}") from None
    files = {posixpath.basename(e["name"].rstrip("/")): e for e in entries if e["type"] == "file"}
    names = sorted(f[: -len(".parquet")] for f in files if f.endswith(".parquet"))
    if not names:
        raise D2ScaleError(f"no .parquet files in metadata directory {url} (the pool is empty)")
    shards, offset, signature = [], 0, []
    for name in names:
        if f"{name}.npz" not in files:
            raise D2ScaleError(f"{name}.parquet has no matching {name}.npz in {url}")
        parquet = files[f"{name}.parquet"]["name"]
        rows = _parquet_rows(fs, parquet)
        shards.append(Shard(name, parquet, files[f"{name}.npz"]["name"], rows, offset))
        offset += rows
        signature.append(
            [name, rows, files[f"{name}.parquet"].get("size"), files[f"{name}.npz"].get("size")]
        )
    if offset == 0:
        raise D2ScaleError(f"the pool at {url} has no rows")
    digest = hashlib.sha256(json.dumps(signature).encode()).hexdigest()[:16]
    return Pool(url, fs, shards, digest)


def _parquet_rows(fs, path: str) -> int:
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    except (OSError, pa.ArrowException) as e:
        raise D2ScaleError(f"cannot read parquet file {path}: {e}") from None


def read_columns(pool: Pool, shard: Shard, columns: list[str]) -> pa.Table:
    """Only ``columns`` of one shard's parquet; an unknown column is a clear error."""
    try:
        with pool.fs.open(shard.parquet, "rb") as f:
            pf = pq.ParquetFile(f)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise D2ScaleError(
                    f"column {missing[0]!r} is not in {shard.parquet} "
                    f"(available: {', '.join(pf.schema_arrow.names)})"
                )
            return pf.read(columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise D2ScaleError(f"cannot read parquet file {shard.parquet}: {e}") from None


def feature_keys(embedding_model: str, feature_type: str) -> list[str]:
    """npz keys making up a feature, e.g. ``image_text`` → ``["l14_img", "l14_txt"]``."""
    if embedding_model not in EMBEDDING_MODELS:
        raise D2ScaleError(
            f"embedding model must be one of {EMBEDDING_MODELS}, got {embedding_model!r}"
        )
    if feature_type not in FEATURE_TYPES:
        raise D2ScaleError(f"feature type must be one of {FEATURE_TYPES}, got {feature_type!r}")
    return [f"{embedding_model}_{s}" for s in _FEATURE_SUFFIXES[feature_type]]


@dataclass
class PoolEmbeddings:
    """:class:`~d2scale.types.EmbeddingBlocks` over a pool: block ``i`` is shard ``i``.

    Each npz member (float16 or float32, stored or deflated) is re-normalised to unit length
    in float64 and stored as float32; ``image_text`` concatenates the two unit vectors.
    :meth:`iter_chunks` streams a shard a bounded number of rows at a time (the members are
    read sequentially from the zip, never whole), so memory does not grow with shard size.
    """

    pool: Pool
    keys: list[str]

    def __post_init__(self) -> None:
        self.sizes = [s.rows for s in self.pool.shards]
        self.dim = sum(_DIMS[k.split("_")[0]] for k in self.keys)
        self.fingerprint = f"{self.pool.fingerprint}:{'+'.join(self.keys)}"

    def load(self, i: int) -> np.ndarray:
        parts = [x for _, x in self.iter_chunks(i, 32768)]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)

    def iter_chunks(self, i: int, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 unit rows) of shard ``i``, ``rows`` rows at a time."""
        shard = self.pool.shards[i]
        try:
            with self.pool.fs.open(shard.npz, "rb") as f, zipfile.ZipFile(f) as z:
                names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
                readers = [_MemberReader(z, key, names, shard) for key in self.keys]
                if sum(r.cols for r in readers) != self.dim:
                    raise D2ScaleError(
                        f"{shard.npz}: embeddings have {sum(r.cols for r in readers)} "
                        f"dimensions, expected {self.dim}"
                    )
                for start in range(0, shard.rows, max(1, rows)):
                    m = min(rows, shard.rows - start)
                    out = np.empty((m, self.dim), dtype=np.float32)
                    col = 0
                    for r in readers:
                        _normalise_into(r.read(m), out[:, col : col + r.cols], shard.npz, r.key,
                                        first=start)  # fmt: skip
                        col += r.cols
                    yield start, out
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise D2ScaleError(f"cannot read embeddings from {shard.npz}: {e}") from None


class _MemberReader:
    """Sequential row reads of one 2-D ``.npy`` member of an open zip (stored or deflated)."""

    def __init__(self, z: zipfile.ZipFile, key: str, names: list[str], shard: Shard):
        if key not in names:
            raise D2ScaleError(f"{shard.npz} has no array {key!r} (has: {', '.join(names)})")
        self.key = key
        self.member = z.open(f"{key}.npy")
        fmt = np.lib.format
        readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        version = fmt.read_magic(self.member)
        if version not in readers:
            raise D2ScaleError(f"{shard.npz}: array {key!r} has .npy format {version}")
        shape, fortran, self.dtype = readers[version](self.member)
        _check_shape(np.empty(shape[:1] + (0,) * (len(shape) - 1)), shard, key)
        if self.dtype.hasobject or self.dtype.kind not in "fiu":
            raise D2ScaleError(f"{shard.npz}: array {key!r} has dtype {self.dtype}, not numbers")
        self.cols = int(shape[1])
        self.whole = None
        if fortran:  # column-major: rows are not contiguous, read it whole
            data = self.member.read()
            self.whole = np.frombuffer(data, self.dtype).reshape(shape, order="F")
        self.at = 0

    def read(self, m: int) -> np.ndarray:
        if self.whole is not None:
            self.at += m
            return self.whole[self.at - m : self.at]
        nbytes = m * self.cols * self.dtype.itemsize
        data = self.member.read(nbytes)
        if len(data) != nbytes:
            raise D2ScaleError(f"array {self.key!r} is truncated")
        return np.frombuffer(data, self.dtype).reshape(m, self.cols)


def check_npz(pool: Pool, shard: Shard, keys: list[str]) -> None:
    """Fail fast, from the .npy headers only: every key present, 2-D, one row per parquet row."""
    try:
        with pool.fs.open(shard.npz, "rb") as f, zipfile.ZipFile(f) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            for key in keys:
                if key not in names:
                    raise D2ScaleError(
                        f"{shard.npz} has no array {key!r} (has: {', '.join(names)})"
                    )
                with z.open(f"{key}.npy") as member:
                    shape = _npy_shape(member)
                if shape is not None:
                    _check_shape(np.empty(shape[:1] + (0,) * (len(shape) - 1)), shard, key)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise D2ScaleError(f"cannot read embeddings from {shard.npz}: {e}") from None


def _npy_shape(member) -> tuple[int, ...] | None:
    """Shape from a .npy header (formats 1.0 and 2.0; None for others: checked at load)."""
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    reader = readers.get(fmt.read_magic(member))
    return None if reader is None else reader(member)[0]


def _check_shape(arr: np.ndarray, shard: Shard, key: str) -> None:
    if arr.ndim != 2:
        raise D2ScaleError(f"{shard.npz}: array {key!r} must be 2-D, has shape {arr.shape}")
    if arr.shape[0] != shard.rows:
        raise D2ScaleError(
            f"row-count mismatch: {shard.npz} array {key!r} has {arr.shape[0]} rows but "
            f"{shard.parquet} has {shard.rows}"
        )


def _normalise_into(
    arr: np.ndarray, out: np.ndarray, path: str, key: str, chunk: int = 8192, first: int = 0
):
    for start in range(0, arr.shape[0], chunk):
        x = arr[start : start + chunk].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
        if bad.size:
            row = first + start + int(bad[0])
            what = "has zero norm" if norms[bad[0]] == 0 else "contains NaN or inf"
            raise D2ScaleError(f"{path}, array {key!r}, row {row}: embedding {what}")
        out[start : start + x.shape[0]] = x / norms[:, None]
