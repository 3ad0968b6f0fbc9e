"""CUDA kernels of d2scale's message passing: sources, CuPy loader, g++ host emulation.

The same ``.cu`` files run on a GPU through :func:`load_cupy_module` (NVRTC) and on the CPU
through :func:`build_host_library` (g++ with ``host_emulation.h`` and ``host_launch.cpp``),
so the tests of the emulation test the very code the GPU runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from d2scale.errors import D2ScaleError

KERNEL_DIR = Path(__file__).parent
KERNEL_SOURCES: tuple[Path, ...] = (KERNEL_DIR / "forward.cu", KERNEL_DIR / "reverse.cu")
HOST_EMULATION_HEADER = KERNEL_DIR / "host_emulation.h"
HOST_LAUNCH_SOURCE = KERNEL_DIR / "host_launch.cpp"

# No FMA contraction anywhere: results must equal the CPU float64 passes bit for bit.
NVRTC_OPTIONS: tuple[str, ...] = ("--fmad=false", "-std=c++17")
HOST_CXXFLAGS: tuple[str, ...] = (
    "-O2",
    "-std=c++17",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-shared",
    "-fPIC",
)

_C_TYPES = {
    "long long": np.dtype(np.int64),
    "int": np.dtype(np.int32),
    "double": np.dtype(np.float64),
}
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


@dataclass(frozen=True)
class Param:
    """One kernel parameter: a scalar of ``dtype`` or a pointer to ``dtype`` elements."""

    name: str
    dtype: np.dtype
    pointer: bool
    const: bool


def module_source() -> str:
    """All kernel sources as one translation unit (what NVRTC compiles)."""
    return "\n".join(path.read_text() for path in KERNEL_SOURCES)


def _parse_param(text: str) -> Param:
    match = re.fullmatch(r"\s*(const\s+)?([a-z ]+?)\s*(\*?)\s*(\w+)\s*", text)
    if match is None or match.group(2) not in _C_TYPES:
        raise ValueError(f"unsupported kernel parameter {text.strip()!r}")
    const, ctype, star, name = match.groups()
    return Param(name, _C_TYPES[ctype], pointer=bool(star), const=bool(const))


def kernel_signatures() -> dict[str, tuple[Param, ...]]:
    """Every ``extern "C" __global__`` kernel of :data:`KERNEL_SOURCES` with its parameters."""
    return {
        name: tuple(_parse_param(p) for p in params.split(","))
        for name, params in _KERNEL_RE.findall(module_source())
    }


def load_cupy_module() -> Any:
    """Compile the kernels with NVRTC into a ``cupy.RawModule`` (needs cupy and a GPU)."""
    import cupy

    return cupy.RawModule(code=module_source(), options=NVRTC_OPTIONS)


def _default_cache_dir() -> Path:
    import platformdirs

    root = os.environ.get("D2SCALE_CACHE_DIR") or platformdirs.user_cache_dir("d2scale")
    return Path(root) / "kernels"


def build_host_library(cache_dir: str | os.PathLike | None = None, compiler: str = "g++") -> Path:
    """Compile the host emulation into a shared library, cached by a hash of its inputs."""
    cxx = shutil.which(compiler)
    if cxx is None:
        raise D2ScaleError(
            f"The CUDA host emulation needs a C++17 compiler; {compiler!r} "
            "was not found on the PATH."
        )
    sources = (*KERNEL_SOURCES, HOST_EMULATION_HEADER, HOST_LAUNCH_SOURCE)
    digest = hashlib.sha256(" ".join((compiler, *HOST_CXXFLAGS)).encode())
    for path in sources:
        digest.update(path.read_bytes())
    out_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    target = out_dir / f"d2scale_kernels_{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        cmd = [cxx, *HOST_CXXFLAGS, "-I", str(KERNEL_DIR), str(HOST_LAUNCH_SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
        os.replace(tmp, target)  # atomic: concurrent builders never see a partial file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
