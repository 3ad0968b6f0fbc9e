"""Every BLAS at its proper kernel.

faiss-cpu's wheel bundles an OpenBLAS (0.3.15 at the time of writing) that does not know
some current CPUs and falls back to its generic Prescott kernel: on an AVX-512 Xeon its
sgemm ran 3–5× slower than numpy's OpenBLAS on the same product. OpenBLAS reads
``OPENBLAS_CORETYPE`` once, when the library loads, so :func:`load_faiss` sets it from the
CPU's features before faiss is first imported (a value the user set is kept), and
:func:`blas_kernels` reports what every loaded BLAS runs, for ``run.json`` and the
benchmarks' JSON.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

# OpenBLAS core names by the CPU feature that their kernels need, best first.
_CORETYPES = (("avx512f", "SKYLAKEX"), ("avx2", "HASWELL"))
_GENERIC = {"prescott", "katmai", "coppermine", "northwood", "core2", "penryn", "dunnington"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def proper_coretype(flags: set[str]) -> str | None:
    """The OpenBLAS core type whose kernels this CPU runs best (None: leave the choice to
    OpenBLAS)."""
    return next((core for flag, core in _CORETYPES if flag in flags), None)


def load_faiss() -> ModuleType:
    """``import faiss`` with its bundled OpenBLAS at the CPU's proper kernel."""
    if "faiss" not in sys.modules and "OPENBLAS_CORETYPE" not in os.environ:
        core = proper_coretype(cpu_flags())
        if core is not None:
            os.environ["OPENBLAS_CORETYPE"] = core
    import faiss

    return faiss


def blas_kernels() -> list[dict]:
    """Each loaded BLAS library: its file, version, kernel (``architecture``), threads and
    whether the kernel is a generic fallback on a CPU that has better ones."""
    from threadpoolctl import threadpool_info

    better = proper_coretype(cpu_flags()) is not None
    found = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        arch = str(info.get("architecture") or "")
        found.append({
            "library": os.path.basename(str(info.get("filepath", ""))),
            "api": info.get("internal_api"),
            "version": info.get("version"),
            "kernel": arch or None,
            "threads": info.get("num_threads"),
            "generic_fallback": better and arch.lower() in _GENERIC,
        })  # fmt: skip
    return found
