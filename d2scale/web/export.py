"""``d2scale export``: webdataset shards holding exactly the samples of a subset file.

As DataComp's resharder: the input shards are read in order and every sample whose uid is in
the subset file (SPEC §2: ``np.dtype("u8,u8")`` records) is copied with all its members,
byte for byte and under its own key, into ``OUT/{i:08d}.tar`` shards of exactly
``samples_per_shard`` samples (the last one may hold fewer). Beside each tar a
``{i:08d}.parquet`` lists its ``uid``, ``key`` and ``source`` shard. A uid that occurs twice in
the input is written once.

Each output shard is written atomically and then recorded in ``export.json`` with the input
position after its last sample, so an interrupted run resumes from the last finished shard.
When the input is exhausted, the uids of the subset file that no shard held are saved to
``OUT/missing_uids.npy`` and counted in ``export.json``.

Refused, as they would give an export with nothing or with other files in it: an empty subset
file, a subset none of whose uids is in the shards, a shard cut short (no tar end marker) and
an output directory holding shard files that are not this export's.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.params import check_option
from d2scale.pool import UID_DTYPE, encode_uids
from d2scale.progress import Progress
from d2scale.web.params import WEB, wfield
from d2scale.web.webdata import (
    SampleError,
    ShardTally,
    checked_manifest,
    expand_shards,
    iter_samples,
    refuse_foreign_files,
    shard_name,
    uid_of,
    warn,
)

MANIFEST = "export.json"
MISSING = "missing_uids.npy"
SHARD_EXTS = (".tar", ".parquet", ".npz")  # outputs, and pool files that would mix with them


@dataclass
class ExportParams:
    """Everything that determines an ``export`` directory (see ``d2scale export --help``)."""

    uids: str
    shards: str
    out: str
    samples_per_shard: int = wfield("samples_per_shard")
    require_all: bool = False  # a subset uid absent from the shards is an error, not a count

    def validate(self) -> ExportParams:
        check_option(WEB["samples_per_shard"], self.samples_per_shard)
        missing = io.join(self.out, MISSING)
        if io.is_local(self.uids) and io.is_local(missing) and _same_file(self.uids, missing):
            raise D2ScaleError(
                f"--uids {self.uids} is the {MISSING} this export writes into {self.out}; "
                "copy it out of that directory first."
            )
        return self


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(io.local_path(a)) == os.path.realpath(io.local_path(b))


def load_subset(path: str) -> np.ndarray:
    """A DataComp subset file as a sorted array of unique ``u8,u8`` records."""
    try:
        arr = io.load_npy(path)
    except (OSError, ValueError, EOFError) as e:
        raise D2ScaleError(f"cannot read subset file {path}: {e}") from None
    if arr.dtype != UID_DTYPE or arr.ndim != 1:
        raise D2ScaleError(
            f"{path} must hold a 1-D array of dtype u8,u8 (a DataComp subset file); "
            f"found {arr.dtype} with shape {arr.shape}"
        )
    if arr.size == 0:
        raise D2ScaleError(f"subset file {path} holds no uids; there is nothing to export")
    return np.unique(arr)


class _ShardWriter:
    """Collects selected samples and writes full output shards (tar + parquet sidecar)."""

    def __init__(self, out: str, per_shard: int, manifest: dict) -> None:
        self.out, self.per_shard, self.manifest = out, per_shard, manifest
        self.samples: list[dict] = []
        self.rows: list[tuple[str, str, str]] = []

    def add(self, sample: dict, uid: str, source: str, position: list[int]) -> None:
        self.samples.append(sample)
        self.rows.append((uid, sample["__key__"], source))
        if len(self.samples) == self.per_shard:
            self.flush(position)

    def flush(self, position: list[int]) -> None:
        """Write the buffered samples as the next shard; ``position`` = input resume point."""
        if not self.samples:
            return
        from webdataset.writer import TarWriter

        name = f"{len(self.manifest['output']):08d}"
        with (
            io.atomic_path(io.join(self.out, f"{name}.tar")) as tmp,
            open(tmp, "wb") as f,
            TarWriter(f, encoder=False, mtime=0) as tar,
        ):
            for sample in self.samples:
                tar.write(sample)
        uid, key, source = (list(c) for c in zip(*self.rows, strict=True))
        table = pa.table({"uid": uid, "key": key, "source": source})
        with io.atomic_path(io.join(self.out, f"{name}.parquet")) as tmp:
            pq.write_table(table, tmp)
        self.manifest["output"].append(
            {"name": name, "samples": len(self.samples), "end": position}
        )
        io.save_json(io.join(self.out, MANIFEST), self.manifest)
        self.samples, self.rows = [], []


def export(params: ExportParams, progress: Progress | None = None) -> dict:
    """Write the selected samples of ``params.shards`` to ``params.out``; return ``export.json``
    with ``already_complete`` added (True: a finished export, nothing was done)."""
    progress = progress or Progress()
    params.validate()
    subset = load_subset(params.uids)
    urls = expand_shards(params.shards)
    io.check_writable(params.out)
    manifest = _load_manifest(params, urls)
    refuse_foreign_files(params.out, SHARD_EXTS, _own_files(params.out, manifest), "export")
    found = _found_so_far(params.out, manifest, subset, progress)
    already_complete = manifest["complete"]
    if not already_complete:
        writer = _ShardWriter(params.out, params.samples_per_shard, manifest)
        _scan(urls, subset, found, writer, progress)
        manifest["complete"] = True
    record = _finish(params, manifest, subset, found, progress)
    return {**record, "already_complete": already_complete}


def _own_files(out: str, manifest: dict) -> set[str]:
    """The shard files this export wrote, and the next one (a killed run may have left it)."""
    names = [o["name"] for o in manifest["output"]]
    if io.exists(io.join(out, MANIFEST)):
        names.append(f"{len(manifest['output']):08d}")
    return {f"{name}{ext}" for name in names for ext in (".tar", ".parquet")}


def _scan(
    urls: list[str], subset: np.ndarray, found: np.ndarray, writer: _ShardWriter,
    progress: Progress,
) -> None:  # fmt: skip
    """Read the shards from the manifest's resume point and route every sample (the
    directory has its ``export.json`` before the first shard)."""
    manifest = writer.manifest
    io.save_json(io.join(writer.out, MANIFEST), manifest)
    start = manifest["output"][-1]["end"] if manifest["output"] else [0, 0]
    for s in range(start[0], len(urls)):
        tally = ShardTally(progress, f"export {shard_name(urls[s])} ({s + 1}/{len(urls)} shards)")
        skip = start[1] if s == start[0] else 0
        read = 0
        for i, sample in enumerate(iter_samples(urls[s], lcase=False)):
            if i >= skip:
                _route(sample, urls[s], [s, i + 1], subset, found, writer)
                read += 1
                tally(read)
        tally.done(read)
    writer.flush([len(urls), 0])


def _route(sample, url, position, subset, found, writer) -> None:
    """Send one input sample to the writer if its uid is selected and not yet written."""
    counts = writer.manifest["counts"]
    counts["read"] += 1
    try:
        uid = uid_of(sample)
    except SampleError:
        counts["no_uid"] += 1
        return
    record = np.array([(int(uid[:16], 16), int(uid[16:], 16))], UID_DTYPE)[0]
    j = int(np.searchsorted(subset, record))
    if j == subset.shape[0] or subset[j] != record:
        return
    if found[j]:
        counts["duplicates"] += 1
        return
    found[j] = True
    writer.add(sample, uid, url, position)


def _finish(params: ExportParams, manifest: dict, subset, found, progress: Progress) -> dict:
    """Save ``missing_uids.npy`` and the counts; refuse an export of nothing, warn of gaps."""
    missing = subset[~found]
    missing_path = io.join(params.out, MISSING)
    io.save_npy(missing_path, missing)
    manifest["counts"] |= {
        "subset": int(subset.shape[0]),
        "written": int(sum(o["samples"] for o in manifest["output"])),
        "missing": int(missing.shape[0]),
    }
    manifest["shards_written"] = len(manifest["output"])
    io.save_json(io.join(params.out, MANIFEST), manifest)
    if missing.shape[0] == subset.shape[0]:
        raise D2ScaleError(
            f"none of the {subset.shape[0]:,} uids of {params.uids} is in the shards "
            f"{params.shards!r}; are they the shards this subset was selected from?"
        )
    gap = f"{missing.shape[0]:,} of {subset.shape[0]:,} uids"
    if missing.shape[0] and params.require_all:
        raise D2ScaleError(
            f"{gap} of {params.uids} are in none of the shards (listed in {missing_path})"
        )
    if missing.shape[0]:
        warn(progress, f"{gap} are in none of the shards (listed in {missing_path})")
    return manifest


def _load_manifest(params: ExportParams, urls: list[str]) -> dict:
    """``export.json`` to resume, or a new one; refuses a directory of another export."""
    fs, path = io.filesystem(params.uids)
    with fs.open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    identity = {
        "uids_sha256": digest,
        "shards": urls,
        "samples_per_shard": params.samples_per_shard,
    }
    path = io.join(params.out, MANIFEST)
    manifest = checked_manifest(path, identity, lambda key, got, wanted: (
        f"{params.out} holds an export with another {key.replace('_', ' ')}; use another "
        "--out directory"))  # fmt: skip
    if manifest is None:
        counts = {"read": 0, "no_uid": 0, "duplicates": 0}
        return {"command": "export", **identity, "complete": False, "counts": counts, "output": []}
    return manifest


def _found_so_far(out: str, manifest: dict, subset: np.ndarray, progress: Progress) -> np.ndarray:
    """Which subset uids the finished output shards already hold (from their parquet files)."""
    found = np.zeros(subset.shape[0], dtype=bool)
    for i, entry in enumerate(manifest["output"]):
        path = io.join(out, f"{entry['name']}.parquet")
        fs, fs_path = io.filesystem(path)
        try:
            with fs.open(fs_path, "rb") as f:
                uids = encode_uids(pq.read_table(f, columns=["uid"]).column("uid"), where=path)
        except (OSError, pa.ArrowException) as e:
            raise D2ScaleError(
                f"cannot resume from {path}: {e}; remove {out} to start over"
            ) from None
        found[np.searchsorted(subset, uids)] = True
        progress.count("uids of the shards already exported", i + 1, len(manifest["output"]),
                       "shards")  # fmt: skip
    return found
