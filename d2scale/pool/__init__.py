"""The pool: DataComp-style metadata shards (``<name>.parquet`` + ``<name>.npz``) read and
checked, their uids, float16 embeddings, synthetic pools and buckets of pools.

This is the face the side packages (``web``, ``vision``) use. Names are imported lazily:
only the module that defines a name is loaded when it is first used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Pool": "d2scale.pool.sources",
    "PoolEmbeddings": "d2scale.pool.sources",
    "feature_keys": "d2scale.pool.sources",
    "open_pool": "d2scale.pool.sources",
    "read_columns": "d2scale.pool.sources",
    "read_metadata": "d2scale.pool.sources",
    "UID_DTYPE": "d2scale.pool.uids",
    "encode_uids": "d2scale.pool.uids",
    "decode_uids": "d2scale.pool.uids",
    "subset_array": "d2scale.pool.uids",
    "to_float32": "d2scale.pool.halfprec",
    "write_pool": "d2scale.pool.synth",
    "EMBEDDING_DIMS": "d2scale.pool.files",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'd2scale.pool' has no attribute {name!r}")
