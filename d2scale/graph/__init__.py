"""The kNN graph stage: exact or IVF search, sharded, streamed through Dask, stored on disk.

Names are imported lazily so that commands needing only ``d2scale.graph.symmetric`` do not
load faiss, numba kernels or Dask.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_knn_graph": "d2scale.graph.build",
    "save_graph": "d2scale.graph.store",
    "load_graph": "d2scale.graph.store",
    "load_lists": "d2scale.graph.store",
    "topk": "d2scale.graph.scan",
    "drop_self": "d2scale.graph.shards",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'd2scale.graph' has no attribute {name!r}")
