"""Outputs, always written atomically: temp file in the target directory, then rename.

Local paths use ``os.replace``; other fsspec URLs are written to a temporary name and moved
(object stores make the final PUT visible at once).
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


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary local path beside ``path``; rename it over ``path`` on success."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
    except OSError as e:
        raise D2ScaleError(f"cannot write to {directory}: {e.strerror or e}") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; finished files get the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (the file name is kept exactly)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_npz(path: str, **arrays: np.ndarray) -> None:
    """``np.savez`` (stored, not deflated) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_json(path: str, obj: dict) -> None:
    """Pretty JSON to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=json_default)
        f.write("\n")


def json_default(o):
    """``json.dump`` fallback for NumPy scalars and arrays."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_writable(directory: str) -> None:
    """Fail early, before hours of work, if ``directory`` cannot take our outputs."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".d2scale-probe-"):
            pass
    except OSError as e:
        raise D2ScaleError(
            f"output directory {directory} is not writable: {e.strerror or e}"
        ) from None
