"""File I/O that never leaves a half-written file: temp file + rename, for local paths and
any fsspec URL (``s3://…``, ``gs://…``, ``memory://…``).

Local paths use ``os.replace`` in the target directory. Other URLs are written to a local
temporary file and uploaded in one ``put`` (object stores make a PUT visible whole).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator

import numpy as np

from d2scale.errors import D2ScaleError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def is_local(url: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def filesystem(url: str):
    """``(fs, path)`` for a URL; an unknown protocol or missing driver is one sentence."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise D2ScaleError(f"cannot open {url}: {e}") from None
    except ValueError as e:
        raise D2ScaleError(f"cannot open {url}: {e}") from None


def join(url: str, *parts: str) -> str:
    return os.path.join(url, *parts) if is_local(url) else "/".join([url.rstrip("/"), *parts])


@contextlib.contextmanager
def atomic_path(url: str) -> Iterator[str]:
    """Yield a temporary local path; on success it replaces ``url`` in one step."""
    local = is_local(url)
    directory = os.path.dirname(os.path.abspath(local_path(url))) if local else None
    try:
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(url.rstrip('/'))}.", suffix=".tmp", dir=directory
        )
    except OSError as e:
        raise D2ScaleError(f"cannot write to {directory}: {e.strerror or e}") from None
    os.close(fd)
    try:
        yield tmp
        if local:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual mode
            os.replace(tmp, local_path(url))
        else:
            fs, path = filesystem(url)
            fs.put_file(tmp, path)
    except OSError as e:
        raise D2ScaleError(f"cannot write {url}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def save_npy(url: str, array: np.ndarray) -> None:
    """``np.save`` to ``url`` atomically (the file name is kept exactly)."""
    with atomic_path(url) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_npz(url: str, **arrays: np.ndarray) -> None:
    """``np.savez`` (stored, not deflated) to ``url`` atomically."""
    with atomic_path(url) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_json(url: str, obj: dict) -> None:
    """Pretty JSON to ``url`` atomically."""
    with atomic_path(url) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=json_default)
        f.write("\n")


def load_npy(url: str, mmap: bool = False) -> np.ndarray:
    """An ``.npy`` file (memory-mapped when local and ``mmap``)."""
    if is_local(url):
        return np.load(local_path(url), mmap_mode="r" if mmap else None, allow_pickle=False)
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return np.load(f, allow_pickle=False)


def read_json(url: str) -> dict:
    fs, path = filesystem(url)
    with fs.open(path, "r") as f:
        return json.load(f)


def exists(url: str) -> bool:
    if is_local(url):
        return os.path.exists(local_path(url))
    fs, path = filesystem(url)
    return fs.exists(path)


def listdir(url: str) -> list[str]:
    """Names (not paths) in directory ``url``; empty when it does not exist."""
    if is_local(url):
        path = local_path(url)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def file_sizes(url: str) -> dict[str, int]:
    """Name → size in bytes of every file directly in directory ``url`` (empty if none)."""
    if is_local(url):
        path = local_path(url)
        if not os.path.isdir(path):
            return {}
        return {e.name: e.stat().st_size for e in os.scandir(path) if e.is_file()}
    fs, path = filesystem(url)
    if not fs.exists(path):
        return {}
    return {
        e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e["size"])
        for e in fs.ls(path, detail=True)
        if e.get("type") == "file"
    }


def find(url: str) -> list[str]:
    """Every file under directory ``url`` (full paths or URLs)."""
    if is_local(url):
        root = local_path(url)
        return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    fs, path = filesystem(url)
    protocol = url.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in fs.find(path)] if fs.exists(path) else []


def makedirs(url: str) -> None:
    if is_local(url):
        os.makedirs(local_path(url), exist_ok=True)
    else:
        fs, path = filesystem(url)
        fs.makedirs(path, exist_ok=True)


def move(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` (replacing it)."""
    if is_local(src):
        os.replace(local_path(src), local_path(dst))
    else:
        fs, path = filesystem(src)
        fs.mv(path, filesystem(dst)[1])


def remove(url: str, recursive: bool = False) -> None:
    """Delete a file (or a tree with ``recursive``); a missing one is fine."""
    if is_local(url):
        import shutil

        path = local_path(url)
        if os.path.isdir(path) and recursive:
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def json_default(o):
    """``json.dump`` fallback for NumPy scalars and arrays."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_writable(url: str) -> None:
    """Fail early, before hours of work, if directory ``url`` cannot take our outputs."""
    try:
        if is_local(url):
            os.makedirs(local_path(url), exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=local_path(url), prefix=".d2scale-probe-"):
                pass
        else:
            makedirs(url)
    except OSError as e:
        raise D2ScaleError(f"output directory {url} is not writable: {e.strerror or e}") from None
