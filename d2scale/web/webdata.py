"""Webdataset shards (tar files of samples), as shared by ``embed`` and ``export``.

A sample is the group of tar members sharing one key (``000017.jpg``, ``000017.txt``,
``000017.json``); members are kept as raw bytes. Shards are given as brace patterns
(``shards/{00000..00127}.tar``) or globs, on local disk or any fsspec URL, and are read with
webdataset's tar iterators over fsspec streams.

A sample's uid is the ``uid`` of its json member (DataComp shards carry one); without one it is
a 128-bit BLAKE2b hash of url and caption, 32 hex characters (the image bytes stand in for a
missing url). ``embed`` and ``export`` use the same rule, so their uids agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import sys
import tarfile
import threading
import time
from collections.abc import Iterator

import braceexpand
import fsspec

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.progress import PLAIN_INTERVAL_S, Progress

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
TEXT_EXTS = ("txt", "text", "caption")
_HEX = frozenset("0123456789abcdef")


class SampleError(ValueError):
    """A sample that cannot be used; counted by ``reason`` (a short label), never fatal."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def expand_shards(pattern: str) -> list[str]:
    """Shard URLs of a brace pattern or glob, in pattern order; every shard must exist."""
    urls: list[str] = []
    for part in braceexpand.braceexpand(pattern):
        fs, path = fsspec.core.url_to_fs(part)
        if any(c in path for c in "*?["):
            found = sorted(fs.glob(path))
            urls += [_as_url(part, p) for p in found if not fs.isdir(p)]
        elif fs.isfile(path):
            urls.append(part)
        else:
            raise D2ScaleError(f"shard {part} does not exist (from --shards {pattern!r})")
    if not urls:
        raise D2ScaleError(f"--shards {pattern!r} matches no files")
    names = [shard_name(u) for u in urls]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise D2ScaleError(f"two shards share the base name {dup!r}; give each a unique name")
    return urls


def _as_url(original: str, path: str) -> str:
    """``path`` as a URL of the same filesystem as ``original``."""
    protocol = original.split("://", 1)[0] if "://" in original else None
    return f"{protocol}://{path}" if protocol else path


def shard_name(url: str) -> str:
    """``s3://b/pool/00000012.tar`` → ``00000012`` (the base name of its output pair)."""
    base = posixpath.basename(url.rstrip("/"))
    for ext in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def iter_samples(url: str, *, lcase: bool = True) -> Iterator[dict]:
    """Raw samples of one shard, in tar order: ``{"__key__": ..., ext: bytes, ...}``.

    Extensions are lower-cased unless ``lcase`` is False (``export`` keeps member names as
    they are). A truncated or corrupt tar raises :class:`D2ScaleError` naming the shard, also
    one cut at a member boundary (as a killed writer leaves it): it lacks the end marker.
    """
    from webdataset.tariterators import group_by_keys

    try:
        with fsspec.open(url, "rb") as stream:
            for sample in group_by_keys(_tar_files(stream, url), lcase=lcase):
                yield {k: v for k, v in sample.items() if k != "__url__"}
    except (OSError, EOFError, ValueError, tarfile.TarError) as e:
        raise D2ScaleError(f"cannot read shard {url}: {e.args[0] if e.args else e}") from None


class _EndTarInfo(tarfile.TarInfo):
    """Records on the tar object why its member list ended (see :func:`_tar_files`)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar.d2scale_end = e
            raise


def _tar_files(stream, url: str) -> Iterator[dict]:
    """Regular files of a tar stream as ``{"fname", "data", "__url__"}``, in tar order.

    tarfile ends a member list quietly at end of file, at a cut header and at a garbage
    header; only a zero block (the end-of-archive marker) is a complete tar.
    """
    count = 0
    with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_EndTarInfo) as tar:
        for info in tar:
            tar.members = []  # a stream of any length in constant memory
            if not info.isreg() or re.match(r"__[^/]*__($|/)", info.name):
                continue
            count += 1
            yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
    if not isinstance(getattr(tar, "d2scale_end", None), tarfile.EOFHeaderError):
        raise D2ScaleError(
            f"shard {url} is truncated: it stops after {count} files without the tar "
            "end-of-archive marker (as a killed writer leaves it); fetch it again or leave it "
            "out of --shards"
        )


def metadata(sample: dict) -> dict:
    """The sample's json member as a dict (empty without one)."""
    raw = sample.get("json")
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError("bad json", str(e)) from None
    if not isinstance(meta, dict):
        raise SampleError("bad json", "not an object")
    return meta


def caption(sample: dict, meta: dict) -> str:
    """The caption: the first text member, else the json's ``caption``, else empty."""
    for ext in TEXT_EXTS:
        if ext in sample:
            try:
                return sample[ext].decode("utf-8").strip()
            except UnicodeDecodeError:
                raise SampleError("bad caption", f"the {ext} member is not UTF-8") from None
    return str(meta.get("caption") or "")


def image_bytes(sample: dict) -> bytes:
    """The bytes of the sample's image member."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise SampleError("no image", f"members: {', '.join(_members(sample))}")


def sample_uid(sample: dict, meta: dict, text: str) -> str:
    """32 lowercase hex characters: the json ``uid`` (left-padded), else a hash (module doc)."""
    uid = meta.get("uid")
    if uid is not None:
        uid = str(uid).lower()
        if not 0 < len(uid) <= 32 or not set(uid) <= _HEX:
            raise SampleError("malformed uid", repr(uid))
        return uid.rjust(32, "0")
    url = meta.get("url")
    h = hashlib.blake2b(digest_size=16)
    if url:
        h.update(str(url).encode("utf-8"))
    else:
        h.update(hashlib.sha256(image_bytes(sample)).digest())
    h.update(b"\x00")
    h.update(text.encode("utf-8"))
    return h.hexdigest()


def _members(sample: dict) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


def uid_of(sample: dict) -> str:
    """The uid of a raw sample (member names in any case), as ``embed`` computes it."""
    lower = {k if k.startswith("__") else k.lower(): v for k, v in sample.items()}
    meta = metadata(lower)
    return sample_uid(lower, meta, caption(lower, meta))


def refuse_foreign_files(out: str, exts: tuple[str, ...], ours: set[str], what: str) -> None:
    """Refuse ``out`` when it holds files ending in ``exts`` that this run neither wrote nor
    will write: readers take the whole directory, so they would join its output."""
    others = [n for n in io.listdir(out) if n.lower().endswith(exts) and n not in ours]
    if others:
        raise D2ScaleError(
            f"{out} already holds {others[0]} ({len(others)} such files in all), which is not "
            f"part of this {what} and would sit beside its files; write into an empty "
            "directory or remove them"
        )


def check_log_json(
    log_json: str | None, inputs: list[str | None], out: str, written: tuple[str, ...]
) -> None:
    """Refuse a ``--log-json`` that is one of the local ``inputs`` (the log is appended to it
    before it is read: a shard or subset file would be damaged) or a file the command writes
    into ``out`` (a name in ``written`` or a ``.tar``/``.parquet``/``.npz``: each is replaced
    when written, and the events logged after it would be lost)."""
    if log_json in (None, "-") or not io.is_local(log_json):
        return
    log = os.path.realpath(io.local_path(log_json))
    files = [io.local_path(u) for u in inputs if u and io.is_local(u)]
    if any(os.path.isfile(f) and os.path.realpath(f) == log for f in files):
        raise D2ScaleError(f"the JSON log {log_json} is an input file; choose another --log-json.")
    directory, name = os.path.split(log)
    in_out = io.is_local(out) and directory == os.path.realpath(io.local_path(out))
    if in_out and (name in written or name.lower().endswith((".tar", ".parquet", ".npz"))):
        raise D2ScaleError(
            f"the JSON log {log_json} is a file written into {out}; choose a --log-json "
            "that is not one of its outputs."
        )


def warn(progress: Progress, text: str) -> None:
    """One ``d2scale: warning: …`` line on stderr (also with --quiet) and a JSON event."""
    print(f"d2scale: warning: {text}", file=sys.stderr, flush=True)
    progress.event("warning", message=text)


class ShardTally:
    """Samples read from one shard, a counted step of ``progress`` (updated at most once a
    second, so a JSON log stays small); :meth:`done` ends the step with its total."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label, self.last = progress, label, time.perf_counter()
        progress.count(label, 0, None, "samples")  # the step (and its rate) starts now

    def __call__(self, samples: int) -> None:
        now = time.perf_counter()
        if now - self.last >= 1.0:
            self.last = now
            self.progress.count(self.label, samples, None, "samples")

    def done(self, samples: int) -> None:
        self.progress.count(self.label, samples, samples, "samples")


@contextlib.contextmanager
def ticking(progress: Progress, label: str) -> Iterator[None]:
    """A step that reports nothing itself: its start, a line every 10 s while it runs (as
    plain progress lines), and its end with its seconds."""
    stop = threading.Event()
    t0 = time.perf_counter()

    def tick() -> None:
        while not stop.wait(PLAIN_INTERVAL_S):
            progress.say(f"{label}: running for {time.perf_counter() - t0:.0f}s")

    progress.stage(label, "start")
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    progress.stage(label, "done", time.perf_counter() - t0)


def checked_manifest(path: str, identity: dict, other) -> dict | None:
    """The JSON manifest at ``path`` (None where there is none yet). Unreadable, or made with
    another ``identity`` (``other(key, recorded, wanted)`` words the refusal), it is refused
    in one line: the folder holds another run's output."""
    if not io.exists(path):
        return None
    try:
        manifest = io.read_json(path)
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot read {path}: {e}; remove it to start over") from None
    for key, value in identity.items():
        if manifest.get(key) != value:
            raise D2ScaleError(other(key, manifest.get(key), value))
    return manifest
