"""On-disk kNN graphs: resumable part files under a manifest, and the consolidated view.

Layout of a graph directory ``GDIR``::

    manifest.json        input fingerprint, parameters, shard plan, parts done
    model.npz            trained IVF model (PCA, centroids, nprobe, m), reused on resume
    parts/part-00000.npz final rows of partition 0 (neighbors, distances)
    parts/part-00000.shard-001.npz  its candidates from shard 1 (only with several shards)
    parts/lists-00000.npy IVF list of every row of partition 0 (int32)
    neighbors.npy        int64 N × k, row order = pool order, -1 padding
    distances.npy        float32 N × k Euclidean, inf padding
    lists.npy            int32 N, IVF list of each row (IVF graphs only)
    meta.json            n, k, dim, index type, nlist, nprobe, measured recall, timings, ...

Every file is written to a temporary name and moved into place with ``os.replace``, so a
killed run leaves only complete files; a part that exists is done (the manifest's list of
parts is a summary of the same fact).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.io import json_default, save_json, save_npy, save_npz
from d2scale.types import KnnGraph

MANIFEST_VERSION = 1


class GraphStore:
    """The resumable state of one graph build in directory ``gdir``."""

    def __init__(self, gdir: str):
        self.gdir = gdir
        self.parts_dir = os.path.join(gdir, "parts")

    # -- manifest ------------------------------------------------------------------
    @property
    def manifest_path(self) -> str:
        return os.path.join(self.gdir, "manifest.json")

    def read_manifest(self) -> dict | None:
        if not os.path.exists(self.manifest_path):
            return None
        return _read_json(self.manifest_path)

    def begin(self, fingerprint: str, params: dict, shards: list[list[int]]) -> list[list[int]]:
        """Start or resume; returns the shard plan to use (a resumed run keeps its own).

        A manifest from a different input or different parameters is refused.
        """
        old = self.read_manifest()
        if old is not None:
            if old.get("fingerprint") != fingerprint:
                raise D2ScaleError(
                    f"{self.gdir} holds a graph build of a different input (fingerprint "
                    f"{old.get('fingerprint')} vs {fingerprint}); use another directory or "
                    "delete it"
                )
            diff = _param_diff(old.get("params", {}), _jsonable(params))
            if diff:
                raise D2ScaleError(
                    f"{self.gdir} holds a graph build with other parameters ({diff}); "
                    f"use another directory or delete it"
                )
            return old["shards"]
        manifest = {
            "version": MANIFEST_VERSION,
            "fingerprint": fingerprint,
            "params": params,
            "shards": shards,
            "parts_done": [],
        }
        os.makedirs(self.parts_dir, exist_ok=True)
        save_json(self.manifest_path, manifest)
        return shards

    def mark_done(self, parts: list[int]) -> None:
        manifest = self.read_manifest() or {}
        manifest["parts_done"] = sorted(set(manifest.get("parts_done", [])) | set(parts))
        save_json(self.manifest_path, manifest)

    # -- parts -----------------------------------------------------------------------
    def part_path(self, part: int) -> str:
        return os.path.join(self.parts_dir, f"part-{part:05d}.npz")

    def shard_part_path(self, part: int, shard: int) -> str:
        return os.path.join(self.parts_dir, f"part-{part:05d}.shard-{shard:03d}.npz")

    def lists_path(self, part: int) -> str:
        return os.path.join(self.parts_dir, f"lists-{part:05d}.npy")

    def done(self, n_parts: int) -> set[int]:
        """Partitions whose final part file exists."""
        return {p for p in range(n_parts) if os.path.exists(self.part_path(p))}

    def read_part(self, part: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.part_path(part)
        with _reading(path), np.load(path) as z:
            return z["neighbors"], z["distances"]

    # -- model -----------------------------------------------------------------------
    @property
    def model_path(self) -> str:
        return os.path.join(self.gdir, "model.npz")

    def save_model(self, arrays: dict[str, np.ndarray], info: dict) -> None:
        save_npz(self.model_path, info=np.array(json.dumps(info, default=json_default)), **arrays)

    def load_model(self) -> tuple[dict[str, np.ndarray], dict] | None:
        if not os.path.exists(self.model_path):
            return None
        with _reading(self.model_path), np.load(self.model_path) as z:
            arrays = {k: z[k] for k in z.files if k != "info"}
            return arrays, json.loads(str(z["info"]))


def save_graph(gdir: str, graph: KnnGraph, meta: dict, lists: np.ndarray | None = None) -> None:
    """Write ``neighbors.npy``, ``distances.npy`` (``lists.npy``) and ``meta.json`` atomically."""
    _write_arrays(gdir, graph, lists)
    meta = {**meta, "n": graph.n, "k": graph.k}
    save_json(os.path.join(gdir, "meta.json"), meta)


def load_graph(gdir: str, mmap: bool = False) -> tuple[KnnGraph, dict]:
    """Read a graph directory (``neighbors.npy`` ints and ``distances.npy`` floats, N × k;
    ``meta.json`` when present); ``mmap`` maps the arrays read-only instead of loading them.
    A missing, truncated or inconsistent file is a D2ScaleError."""
    meta_path = os.path.join(gdir, "meta.json")
    if not os.path.exists(os.path.join(gdir, "neighbors.npy")):
        raise D2ScaleError(
            f"{gdir} is not a graph directory (no neighbors.npy; `d2scale graph` writes one)"
        )
    meta = _read_json(meta_path) if os.path.exists(meta_path) else {}
    nbr = _load_npy(os.path.join(gdir, "neighbors.npy"), mmap)
    dist = _load_npy(os.path.join(gdir, "distances.npy"), mmap)
    if nbr.dtype.kind not in "iu" or nbr.ndim != 2:
        raise D2ScaleError(f"{gdir}/neighbors.npy must be a 2-D integer array, got {nbr.dtype}")
    if dist.dtype.kind != "f" or dist.shape != nbr.shape:
        raise D2ScaleError(
            f"{gdir}/distances.npy must hold floats of shape {nbr.shape}, got "
            f"{dist.dtype} {dist.shape}"
        )
    if "n" in meta and (meta["n"], meta["k"]) != nbr.shape:
        raise D2ScaleError(
            f"{gdir}: meta.json says {meta['n']} × {meta['k']} but neighbors.npy is {nbr.shape}"
        )
    if nbr.size and (nbr.min() < -1 or nbr.max() >= nbr.shape[0]):
        raise D2ScaleError(f"{gdir}/neighbors.npy holds ids outside [-1, {nbr.shape[0]})")
    return KnnGraph(nbr, dist), meta


def load_lists(gdir: str) -> np.ndarray | None:
    """The IVF list of every row (``lists.npy``), or None for graphs built without IVF."""
    path = os.path.join(gdir, "lists.npy")
    return _load_npy(path) if os.path.exists(path) else None


def _write_arrays(gdir: str, graph: KnnGraph, lists: np.ndarray | None) -> None:
    os.makedirs(gdir, exist_ok=True)
    save_npy(os.path.join(gdir, "neighbors.npy"), np.asarray(graph.neighbors, dtype=np.int64))
    save_npy(os.path.join(gdir, "distances.npy"), np.asarray(graph.distances, dtype=np.float32))
    if lists is not None:
        save_npy(os.path.join(gdir, "lists.npy"), np.asarray(lists, dtype=np.int32))


@contextmanager
def _reading(path: str):
    try:
        yield
    except FileNotFoundError:
        raise D2ScaleError(f"missing graph file {path}") from None
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise D2ScaleError(f"corrupt graph file {path}: {e}") from None


def _load_npy(path: str, mmap: bool = False) -> np.ndarray:
    with _reading(path):
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def _read_json(path: str) -> dict:
    with _reading(path), open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise D2ScaleError(f"corrupt graph file {path}: {e}") from None


def _param_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(
        f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)
    )


def _jsonable(obj: dict) -> dict:
    return json.loads(json.dumps(obj, default=json_default))
