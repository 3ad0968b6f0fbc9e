"""Read a DataComp metadata pool: ``<name>.parquet`` + ``<name>.npz`` pairs, local or fsspec.

Row ``i`` of a parquet file is row ``i`` of every array in the npz of the same base name.
Pool order is: files sorted by name, rows in file order. Each pair is one Dask partition.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import zipfile
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
    """npz keys making up a feature, e.g. ``image_text`` → ``["l14_img", "l14_txt"]``.

    ``embedding_model`` is ``l14``, ``b32`` or another npz prefix (``d2scale embed`` writes
    one per model), lowercase letters and digits."""
    if not re.fullmatch(r"[a-z0-9]+", embedding_model or ""):
        raise D2ScaleError(
            f"embedding model must be one of {', '.join(EMBEDDING_MODELS)} or another npz "
            f"prefix of lowercase letters and digits; got {embedding_model!r}"
        )
    if feature_type not in FEATURE_TYPES:
        raise D2ScaleError(f"feature type must be one of {FEATURE_TYPES}, got {feature_type!r}")
    return [f"{embedding_model}_{s}" for s in _FEATURE_SUFFIXES[feature_type]]


@dataclass
class PoolEmbeddings:
    """:class:`~d2scale.types.EmbeddingBlocks` over a pool: block ``i`` is shard ``i``.

    Each npz member (float16 or float32, stored or deflated) is re-normalised to unit length
    in float64 and stored as float32; ``image_text`` concatenates the two unit vectors.
    """

    pool: Pool
    keys: list[str]

    def __post_init__(self) -> None:
        self.sizes = [s.rows for s in self.pool.shards]
        self.dim = sum(_DIMS.get(k.split("_")[0]) or self._file_dim(k) for k in self.keys)
        self.fingerprint = f"{self.pool.fingerprint}:{'+'.join(self.keys)}"

    def _file_dim(self, key: str) -> int:
        """Columns of npz member ``key`` in the first shard (models other than l14 and b32)."""
        shard = self.pool.shards[0]
        shape = npz_shapes(self.pool, shard, [key])[key]
        if shape is None:  # a .npy header format we do not parse: load the member
            with self.pool.fs.open(shard.npz, "rb") as f, np.load(f) as npz:
                shape = npz[key].shape
        if len(shape) != 2:
            raise D2ScaleError(f"{shard.npz}: array {key!r} must be 2-D, has shape {shape}")
        return int(shape[1])

    def load(self, i: int) -> np.ndarray:
        shard = self.pool.shards[i]
        out = np.empty((shard.rows, self.dim), dtype=np.float32)
        col = 0
        try:
            with self.pool.fs.open(shard.npz, "rb") as f, np.load(f) as npz:
                for key in self.keys:
                    if key not in npz.files:
                        raise D2ScaleError(
                            f"{shard.npz} has no array {key!r} (has: {', '.join(npz.files)})"
                        )
                    arr = npz[key]
                    _check_shape(arr, shard, key)
                    _normalise_into(arr, out[:, col : col + arr.shape[1]], shard.npz, key)
                    col += arr.shape[1]
        except (OSError, ValueError, EOFError) as e:
            raise D2ScaleError(f"cannot read embeddings from {shard.npz}: {e}") from None
        if col != self.dim:
            raise D2ScaleError(
                f"{shard.npz}: embeddings have {col} dimensions, expected {self.dim}"
            )
        return out


def check_npz(pool: Pool, shard: Shard, keys: list[str]) -> None:
    """Fail fast, from the .npy headers only: every key present, 2-D, one row per parquet row."""
    for key, shape in npz_shapes(pool, shard, keys).items():
        if shape is not None:
            _check_shape(np.empty(shape[:1] + (0,) * (len(shape) - 1)), shard, key)


def npz_shapes(pool: Pool, shard: Shard, keys: list[str]) -> dict[str, tuple | None]:
    """Shape of each npz member in ``keys`` from its .npy header (None: an unusual header
    format, checked when loaded); a missing member is an error."""
    shapes: dict[str, tuple | None] = {}
    try:
        with pool.fs.open(shard.npz, "rb") as f, zipfile.ZipFile(f) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            for key in keys:
                if key not in names:
                    raise D2ScaleError(
                        f"{shard.npz} has no array {key!r} (has: {', '.join(names)})"
                    )
                with z.open(f"{key}.npy") as member:
                    shapes[key] = _npy_shape(member)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise D2ScaleError(f"cannot read embeddings from {shard.npz}: {e}") from None
    return shapes


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


def _normalise_into(arr: np.ndarray, out: np.ndarray, path: str, key: str, chunk: int = 32768):
    for start in range(0, arr.shape[0], chunk):
        x = arr[start : start + chunk].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
        if bad.size:
            row = start + int(bad[0])
            what = "has zero norm" if norms[bad[0]] == 0 else "contains NaN or inf"
            raise D2ScaleError(f"{path}, array {key!r}, row {row}: embedding {what}")
        out[start : start + x.shape[0]] = x / norms[:, None]
