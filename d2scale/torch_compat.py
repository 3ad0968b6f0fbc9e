"""Import torchvision (and what builds on it: open_clip) on a CPU-only torch.

The torchvision wheel that matches ``torch==2.13.0`` is a CUDA build: next to the CPU torch
wheel its compiled operators cannot load and ``import torchvision`` fails with "operator
torchvision::nms does not exist" (SPEC §5). Declaring the two operator schemas that its
Python side registers fake kernels for makes the import succeed; models and transforms work,
the C++ ops (``nms``, ``roi_align``, ``torchvision.io``) stay unavailable, so images are
decoded with Pillow. Where the real extension loads (a GPU machine) this does nothing.

Call :func:`ensure_torchvision` before the first ``import torchvision`` / ``open_clip``.
"""

from __future__ import annotations

import functools

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


@functools.cache
def ensure_torchvision() -> None:
    """Make ``import torchvision`` work; idempotent, a no-op where its extension loads."""
    import importlib.util
    import sys

    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    import torch

    if _ops_registered(torch):
        return
    # Try the real import first; only a missing extension falls back to the schemas.
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        lib.define(schema)
    _KEEP.append(lib)
    import torchvision  # noqa: F401


_KEEP: list = []


def _ops_registered(torch) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return True
    except RuntimeError:
        return False
