"""Read a DataComp metadata pool: ``<name>.parquet`` + ``<name>.npz`` pairs, local or fsspec.

Row ``i`` of a parquet file is row ``i`` of every array in the npz of the same base name.
Pool order is: files sorted by name, rows in file order. Each pair with rows is one Dask
partition. :func:`open_pool` reads headers and bounded samples only (:mod:`d2scale.pool.files`),
so pairing, shape, dtype and width errors come before any embedding is read, and every file
of the pool is either read or refused: nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.registry import known_implementations

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.params import EMBEDDING_MODELS, FEATURE_TYPES
from d2scale.pool.files import (
    EMBEDDING_DIMS,
    EMBEDDING_MEMBER,
    NPZ_ERRORS,
    Member,
    ShardFacts,
    check_member,
    inspect_shard,
)
from d2scale.pool.uids import canonical_text, check_unique, encode_uids, not_null, uid_text

_FEATURE_SUFFIXES = {"image": ("img",), "text": ("txt",), "image_text": ("img", "txt")}
_DIMS = EMBEDDING_DIMS
_EXTENSIONS = (".parquet", ".npz")
APPLEDOUBLE = "._"  # macOS writes ._NAME beside NAME on foreign disks: metadata, never data
_LIST_THREADS = 16  # shards inspected at once (range reads, mostly waiting on I/O)


@dataclass(frozen=True)
class Shard:
    """One parquet/npz pair of the pool, with the npz members' shapes and dtypes."""

    name: str
    parquet: str
    npz: str
    rows: int
    offset: int
    members: tuple[Member, ...] = ()


@dataclass
class Pool:
    """An opened metadata directory: its filesystem, its shards in pool order (pairs with
    rows; 0-row pairs are checked, then left out) and its content fingerprint."""

    url: str
    fs: fsspec.AbstractFileSystem = field(repr=False)
    shards: list[Shard]
    fingerprint: str

    @property
    def n(self) -> int:
        return sum(s.rows for s in self.shards)


def open_pool(url: str) -> Pool:
    """List, pair and check the files of a metadata directory; fingerprint their content."""
    fs, root = _filesystem(url)
    files = _list_files(fs, root, url)
    names = _pair_names(files, url)
    facts = _inspect_all(fs, names, files)
    shards, offset = [], 0
    for name, fact in zip(names, facts, strict=True):
        if fact.rows:
            parquet, npz = files[f"{name}.parquet"]["name"], files[f"{name}.npz"]["name"]
            shards.append(Shard(name, parquet, npz, fact.rows, offset, fact.members))
            offset += fact.rows
    if offset == 0:
        raise D2ScaleError(f"the pool at {url} has no rows")
    _check_widths(shards)
    signature = json.dumps([[name, fact.digest] for name, fact in zip(names, facts, strict=True)])
    return Pool(url, fs, shards, hashlib.sha256(signature.encode()).hexdigest()[:16])


def _filesystem(url: str):
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:  # a known protocol whose package is not installed
        protocol = url.split("://", 1)[0]
        known = known_implementations.get(protocol, {})
        package = getattr(e.__cause__, "name", None) or known.get("class", "").split(".")[0]
        raise D2ScaleError(
            f"reading {url} needs the {package} package (pip install {package})"
        ) from None
    except ValueError as e:  # "Protocol not known: foo"
        raise D2ScaleError(f"cannot open metadata directory {url}: {e}") from None


def _list_files(fs, root: str, url: str) -> dict[str, dict]:
    """``{base name: info}`` of the pool's .parquet/.npz files, symbolic links followed."""
    try:
        if not fs.isdir(root):
            if fs.exists(root):
                raise D2ScaleError(
                    f"metadata directory {url} is a file; pass the directory that holds "
                    "the .parquet and .npz files"
                )
            raise D2ScaleError(f"metadata directory {url} does not exist")
        entries = fs.ls(root, detail=True)
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot list metadata directory {url}: {e}") from None
    files = {}
    for entry in entries:
        base = posixpath.basename(entry["name"].rstrip("/"))
        if base.startswith(APPLEDOUBLE):
            continue
        if base.lower().endswith(_EXTENSIONS):
            if not base.endswith(_EXTENSIONS):
                raise D2ScaleError(
                    f"{base} in {url}: pool files must end in lower-case .parquet or .npz"
                )
            files[base] = _regular_file(fs, entry, base, url)
    return files


def _regular_file(fs, entry: dict, base: str, url: str) -> dict:
    if entry["type"] not in ("file", "directory"):  # a symbolic link (or a device, a fifo)
        try:
            entry = fs.info(entry["name"])  # follows links
        except FileNotFoundError:
            raise D2ScaleError(f"{base} in {url} is a broken symbolic link") from None
    if entry["type"] == "directory":
        hint = (
            " (a Spark-style dataset?); each shard must be one .parquet file beside its .npz"
            if base.endswith(".parquet")
            else ", not an npz file"
        )
        raise D2ScaleError(f"{base} in {url} is a directory{hint}")
    if entry["type"] != "file":
        raise D2ScaleError(f"{base} in {url} is not a regular file")
    return entry


def _pair_names(files: dict[str, dict], url: str) -> list[str]:
    parquets = {f[: -len(".parquet")] for f in files if f.endswith(".parquet")}
    npzs = {f[: -len(".npz")] for f in files if f.endswith(".npz")}
    if not files:
        raise D2ScaleError(f"no .parquet files in metadata directory {url} (the pool is empty)")
    unpaired = sorted(parquets ^ npzs)
    if unpaired:
        name = unpaired[0]
        more = f" ({len(unpaired)} unpaired files in all)" if len(unpaired) > 1 else ""
        if name in parquets:
            raise D2ScaleError(f"{name}.parquet has no matching {name}.npz in {url}{more}")
        raise D2ScaleError(
            f"{name}.npz has no matching {name}.parquet in {url}: its rows would be left out{more}"
        )
    return sorted(parquets)


def _inspect_all(fs, names: list[str], files: dict[str, dict]) -> list[ShardFacts]:
    """:func:`~d2scale.pool.files.inspect_shard` of every pair, in parallel; the first error
    in pool order is raised and the rest are cancelled."""

    def one(name: str) -> ShardFacts:
        return inspect_shard(fs, name, files[f"{name}.parquet"], files[f"{name}.npz"])

    if len(names) == 1:
        return [one(names[0])]
    with ThreadPoolExecutor(max_workers=min(_LIST_THREADS, len(names))) as ex:
        futures = [ex.submit(one, name) for name in names]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _check_widths(shards: list[Shard]) -> None:
    """Each embedding member has one width across the pool (blocks are concatenated)."""
    first: dict[str, tuple[int, Shard]] = {}
    for shard in shards:
        for m in shard.members:
            if EMBEDDING_MEMBER.match(m.key) is None:
                continue
            width, where = first.setdefault(m.key, (m.shape[1], shard))
            if m.shape[1] != width:
                raise D2ScaleError(
                    f"{shard.npz}: array {m.key!r} has {m.shape[1]} dimensions but in "
                    f"{where.npz} it has {width}; one pool holds one embedding width per member"
                )


def read_columns(pool: Pool, shard: Shard, columns: list[str]) -> pa.Table:
    """Only ``columns`` of one shard's parquet; an unknown column is a clear error."""
    columns = list(dict.fromkeys(columns))
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
    :meth:`iter_chunks` streams a shard a bounded number of rows at a time (the members are
    read sequentially from the zip, never whole), so memory does not grow with shard size.
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
        check_npz(self.pool, shard, [key])
        shape = next(m.shape for m in shard.members if m.key == key)
        if len(shape) != 2:
            raise D2ScaleError(f"{shard.npz}: array {key!r} must be 2-D, has shape {shape}")
        return int(shape[1])

    def load(self, i: int) -> np.ndarray:
        parts = [x for _, x in self.iter_chunks(i, 32768)]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)

    def iter_chunks(self, i: int, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 unit rows) of shard ``i``, ``rows`` rows at a time."""
        shard = self.pool.shards[i]
        for start, raw in self._raw_chunks(i, rows, shard.rows):
            out = np.empty((raw[0][1].shape[0], self.dim), dtype=np.float32)
            self._normalise(raw, out, shard.npz, start + np.arange(out.shape[0]))
            yield start, out

    def iter_rows(
        self, i: int, local: np.ndarray, rows: int
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(a, b, float32 unit rows local[a:b])`` of shard ``i`` for the sorted rows
        ``local``: the members are read ``rows`` rows at a time up to the last one wanted,
        and only the wanted rows are normalised (to the same values :meth:`iter_chunks`
        gives)."""
        npz = self.pool.shards[i].npz
        for a, b, ids, raw in self._wanted_raw(i, local, rows):
            out = np.empty((b - a, self.dim), dtype=np.float32)
            self._normalise(raw, out, npz, ids)
            yield a, b, out

    @property
    def costly_reads(self) -> bool:
        """Whether reading the pool again costs more than reading local files: some member
        used is deflated, or the pool is not on the local filesystem."""
        if not io.is_local(self.pool.url):
            return True
        return any(m.deflated for s in self.pool.shards for m in s.members if m.key in self.keys)

    def half_members(self) -> list[int] | None:
        """Each member's columns when every member of every shard is float16 (rows can then
        be kept as their raw halves and norms: :meth:`iter_halves`), else None."""
        cols = []
        for key in self.keys:
            found = {(m.dtype[1:], m.shape[1:]) for s in self.pool.shards for m in s.members
                     if m.key == key}  # fmt: skip
            if len(found) != 1 or next(iter(found))[0] != "f2":
                return None
            cols.append(int(next(iter(found))[1][0]))
        return cols if sum(cols) == self.dim else None

    def iter_halves(
        self, i: int, local: np.ndarray, rows: int
    ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """``(a, b, float16 rows, float64 norms)`` of the sorted rows ``local[a:b]`` of shard
        ``i``: the raw members side by side and each member's norm (a column per member),
        from which :func:`d2scale.pool.halfprec.scaled_halves` gives exactly the rows
        :meth:`iter_rows` gives. Only for :meth:`half_members` pools."""
        from d2scale.pool.halfprec import half_norms

        npz = self.pool.shards[i].npz
        for a, b, ids, raw in self._wanted_raw(i, local, rows):
            halves = np.empty((b - a, self.dim), np.float16)
            norms = np.empty((b - a, len(raw)))
            col = 0
            for m, (r, x) in enumerate(raw):
                halves[:, col : col + r.cols] = x
                norms[:, m] = half_norms(halves[:, col : col + r.cols])
                bad = np.flatnonzero(~((norms[:, m] > 0) & (norms[:, m] < np.inf)))
                if bad.size:
                    _bad_row(x[bad[0]], npz, r.key, int(ids[bad[0]]))
                col += r.cols
            yield a, b, halves, norms

    def _wanted_raw(
        self, i: int, local: np.ndarray, rows: int
    ) -> Iterator[tuple[int, int, np.ndarray, list]]:
        """``(a, b, row numbers local[a:b], [(member reader, raw rows)])`` of the sorted rows
        ``local`` of shard ``i``, read ``rows`` rows at a time up to the last one wanted."""
        local = np.asarray(local, dtype=np.int64)
        if local.size == 0:
            return
        for start, raw in self._raw_chunks(i, rows, int(local[-1]) + 1):
            a, b = np.searchsorted(local, [start, start + raw[0][1].shape[0]])
            if b > a:
                sel = local[a:b] - start
                yield int(a), int(b), local[a:b], [(r, x[sel]) for r, x in raw]

    def _normalise(self, raw: list, out: np.ndarray, path: str, ids: np.ndarray) -> None:
        """Normalise the raw rows (row numbers ``ids``) of each member into ``out``."""
        col = 0
        for r, x in raw:
            _normalise_into(x, out[:, col : col + r.cols], path, r.key, ids=ids)
            col += r.cols

    def _raw_chunks(self, i: int, rows: int, stop: int) -> Iterator[tuple[int, list]]:
        """(first row, [(member reader, raw rows)]) of shard ``i`` up to row ``stop``."""
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
                for start in range(0, stop, max(1, rows)):
                    m = min(rows, stop - start)
                    yield start, [(r, r.read(m)) for r in readers]
        except (*NPZ_ERRORS, EOFError) as e:
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
        check_member(Member(key, shape, self.dtype.str), shard.rows, shard.parquet, shard.npz)
        if len(shape) != 2 or shape[0] != shard.rows:
            raise D2ScaleError(
                f"{shard.npz}: array {key!r} has shape {shape}, expected ({shard.rows}, d)"
            )
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
    """Every key is a member of the shard's npz (from the headers read by :func:`open_pool`)."""
    names = [m.key for m in shard.members]
    for key in keys:
        if key not in names:
            raise D2ScaleError(f"{shard.npz} has no array {key!r} (has: {', '.join(names)})")


def check_keys(pool: Pool, keys: list[str]) -> None:
    """:func:`check_npz` for every shard: no I/O, so call it before any work starts."""
    for shard in pool.shards:
        check_npz(pool, shard, keys)


def _normalise_into(arr: np.ndarray, out: np.ndarray, path: str, key: str, ids=None) -> None:
    """``arr``'s rows at unit length into ``out`` (float32); a zero or non-finite row is an
    error naming its row number (``ids``: the rows' numbers in the shard)."""
    from d2scale.pool.halfprec import unit_rows  # compiled: imported where needed (start-up)

    bad = unit_rows(arr, out)
    if bad >= 0:
        _bad_row(arr[bad], path, key, bad if ids is None else int(ids[bad]))


def _bad_row(values: np.ndarray, path: str, key: str, row: int) -> None:
    """Raise the error of an embedding row that cannot be normalised (zero or not finite)."""
    norm = np.linalg.norm(np.asarray(values, dtype=np.float64))
    what = "has zero norm" if norm == 0 else "contains NaN or inf"
    raise D2ScaleError(f"{path}, array {key!r}, row {row}: embedding {what}")


# -- uids and scores -------------------------------------------------------------------


@dataclass
class PoolMetadata:
    """Uids and scores of a whole pool, in pool order."""

    uids: np.ndarray  # encoded, d2scale.pool.uids.UID_DTYPE
    scores: np.ndarray  # float64, finite
    spelling: pa.ChunkedArray | None  # the uids as written in the input; None: all canonical

    def uid_strings(self) -> pa.ChunkedArray:
        """The uids as spelt in the input (e.g. upper case, fewer than 32 digits), so that
        outputs join back on ``uid``."""
        if self.spelling is not None:
            return self.spelling
        return pa.chunked_array([canonical_text(self.uids)])


def read_metadata(pool: Pool, score_column: str, client, npz_keys: list[str] = ()) -> PoolMetadata:
    """Uids and float64 scores for the whole pool, one Dask task per shard.

    ``npz_keys`` are checked against every shard's npz members first (no I/O).
    """
    check_keys(pool, list(npz_keys))
    n = len(pool.shards)
    futures = client.map(_read_shard, [pool] * n, pool.shards, [score_column] * n, pure=False)
    parts = client.gather(futures)
    uids = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    check_unique(uids, where=f"metadata directory {pool.url}")
    spelling = None
    if any(p[2] is not None for p in parts):
        chunks = [canonical_text(u) if text is None else text for u, _, text in parts]
        spelling = pa.chunked_array(chunks, pa.string())
    return PoolMetadata(uids, scores, spelling)


def _read_shard(pool: Pool, shard: Shard, score_column: str):
    """Encoded uids, float64 scores, and the uid strings when they are not canonical."""
    table = read_columns(pool, shard, ["uid", score_column])
    text = uid_text(table.column("uid"), where=shard.parquet)
    uids = encode_uids(text, where=shard.parquet)
    scores = score_values(table.column(score_column), score_column, shard.parquet)
    return uids, scores, None if text.equals(canonical_text(uids)) else text


def _float_values(column: pa.ChunkedArray) -> np.ndarray:
    """A float or integer column as float64, nulls as NaN, read from the Arrow buffers
    (pyarrow's own conversion imports pandas: 0.4 s of a small select's start-up)."""
    out = [np.empty(0)]
    for chunk in column.chunks:
        dtype = np.dtype(chunk.type.to_pandas_dtype())
        values = np.frombuffer(chunk.buffers()[1], dtype, len(chunk), chunk.offset * dtype.itemsize)
        out.append(np.where(not_null(chunk), values.astype(np.float64), np.nan))
    return np.concatenate(out)


def score_values(column: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    """A float, integer or decimal score column as finite float64; anything else (strings,
    also numeric ones, booleans, lists) is refused rather than coerced."""
    kind = column.type
    if pa.types.is_decimal(kind):
        column = column.cast(pa.float64())
    elif not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        values = column.drop_null()
        example = f" (e.g. {values[0].as_py()!r})" if len(values) else ""
        raise D2ScaleError(
            f"{where}: score column {name!r} holds {kind} values{example}; scores must be "
            "floats, integers or decimals (convert the column, or choose another score column)"
        )
    scores = _float_values(column)  # nulls become NaN
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise D2ScaleError(
            f"{where}, row {int(bad[0])}: score column {name!r} is null, NaN or inf "
            f"({bad.size} rows in all)"
        )
    return scores
