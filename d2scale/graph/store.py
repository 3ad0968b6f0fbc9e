"""On-disk kNN graphs: resumable parts under a manifest, and the consolidated view.

Layout of a graph directory ``GDIR``::

    manifest.json          input fingerprint, parameters, and (once planned) the search plan
    model.npz              trained IVF model (PCA, centroids, the evaluation rows and bound),
                           saved once trained; the tuning result is added once tuned
    parts/assign-00000.npz row hashes and nearest IVF lists of partition 0 (and, before
                           tuning, its share of the evaluation rows' exact neighbours)
    parts/searchspace-00000.npy  its projected rows, when spilled (deleted once written)
    parts/chunk-00000.npz  search results of chunk 0 (query ids, candidate/neighbour ids)
    parts/rerank-00000.npz re-ranked block 0 (query ids, neighbour ids, distances²)
    neighbors.npy          int64 N × k, row order = pool order, -1 padding
    distances.npy          float32 N × k Euclidean, inf padding
    lists.npy              int32 N, IVF list of each row (IVF graphs only)
    meta.json              n, k, dim, index type, nlist, nprobe, measured recall, timings, ...

Tasks return their results and only the driver writes here, every file to a temporary name
moved into place (``os.replace``), so a killed run (even by SIGKILL) leaves complete files
only. Every part and the model carry the build's key (a hash of the input fingerprint and
the parameters) and are verified on load — zip CRCs, the key, the expected shapes — so a
part that is missing, truncated, damaged or from another build is simply computed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.graph.pages import release_all
from d2scale.io import is_local, json_default, local_path, save_json, save_npy, save_npz
from d2scale.types import KnnGraph

MANIFEST_VERSION = 4  # 4: keyed parts; the model saved once trained; evaluation in parts


class GraphStore:
    """The resumable state of one graph build in directory ``gdir`` (written by the driver)."""

    def __init__(self, gdir: str):
        self.gdir = local_dir(gdir)
        self.parts_dir = os.path.join(self.gdir, "parts")
        self.key = ""  # the build's key, set by :meth:`begin`

    # -- manifest ------------------------------------------------------------------
    @property
    def manifest_path(self) -> str:
        return os.path.join(self.gdir, "manifest.json")

    def read_manifest(self) -> dict | None:
        if not os.path.exists(self.manifest_path):
            return None
        return _read_json(self.manifest_path)

    def begin(self, fingerprint: str, params: dict) -> dict:
        """Start or resume; returns the manifest (a resumed run keeps its plan).

        A manifest from a different input or different parameters is refused.
        """
        params = keyed_params(params)
        old = self.read_manifest()
        self.key = build_key(fingerprint, params)
        if old is not None and old.get("version") == MANIFEST_VERSION:
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
            return old
        manifest = {"version": MANIFEST_VERSION, "fingerprint": fingerprint, "params": params}
        shutil.rmtree(self.parts_dir, ignore_errors=True)  # no parts without their manifest
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.model_path)
        os.makedirs(self.parts_dir, exist_ok=True)
        save_json(self.manifest_path, manifest)
        return manifest

    def save_plan(self, plan: dict) -> None:
        manifest = self.read_manifest() or {}
        save_json(self.manifest_path, {**manifest, "plan": plan})

    # -- parts -----------------------------------------------------------------------
    def part_path(self, name: str) -> str:
        return os.path.join(self.parts_dir, f"{name}.npz")

    def save_part(self, name: str, **arrays: np.ndarray) -> None:
        save_npz(self.part_path(name), build_key=np.array(self.key), **arrays)

    def load_part(
        self, name: str, keys: tuple[str, ...], check: Callable[[dict], bool] | None = None
    ) -> dict | None:
        """The arrays of part ``name``, or None when it is missing, damaged, of another
        build or (``check``: the caller's test of the arrays) not what was expected."""
        return _load_keyed(self.part_path(name), self.key, keys, check)

    # -- model -----------------------------------------------------------------------
    @property
    def model_path(self) -> str:
        return os.path.join(self.gdir, "model.npz")

    def save_model(self, arrays: dict[str, np.ndarray], info: dict | None) -> None:
        """Save the trained model's arrays and the tuning result (None: not tuned yet)."""
        info_json = np.array(json.dumps(info, default=json_default))
        save_npz(self.model_path, build_key=np.array(self.key), info=info_json, **arrays)

    def load_model(self) -> tuple[dict[str, np.ndarray], dict | None] | None:
        """The saved model's arrays and tuning result (None: not tuned yet), or None when it
        is missing, damaged or of another build (then it is trained again)."""
        got = _load_keyed(self.model_path, self.key, None, None)
        if got is None:
            return None
        try:
            info = json.loads(str(got.pop("info")))
        except (KeyError, ValueError):
            return None
        return got, info


def local_dir(gdir: str) -> str:
    """Graph directory ``gdir`` as a local path (``file://`` URLs too). Graphs are
    memory-mapped and their parts checked with local file calls, so an fsspec URL of another
    filesystem is refused."""
    if not is_local(gdir):
        raise D2ScaleError(
            f"graph directory {gdir} is not a local path: kNN graphs are written and "
            "memory-mapped on a local or shared filesystem."
        )
    return local_path(gdir)


def keyed_params(params: dict) -> dict:
    """The parameters a build's key and manifest hold: those given, less the recall of an
    exact graph (it has no recall target: a rerun with another --recall resumes it)."""
    exact = params.get("index") == "exact"
    return {k: v for k, v in params.items() if not (exact and k == "recall")}


def build_key(fingerprint: str, params: dict) -> str:
    """A short hash of a build's input fingerprint and parameters."""
    text = json.dumps([fingerprint, _jsonable(params)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_keyed(
    path: str, key: str, keys: tuple[str, ...] | None, check: Callable[[dict], bool] | None
) -> dict | None:
    """The arrays ``keys`` (None: all) of the npz ``path`` when it holds build ``key``, reads
    whole (every member's CRC is checked as it is read) and passes ``check``; else None."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as z:
            if str(z["build_key"]) != key:
                return None
            names = [n for n in z.files if n != "build_key"] if keys is None else keys
            arrays = {n: z[n] for n in names}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # damaged
        return None
    return arrays if check is None or check(arrays) else None


def save_graph(gdir: str, graph: KnnGraph, meta: dict, lists: np.ndarray | None = None) -> None:
    """Write ``neighbors.npy``, ``distances.npy`` (``lists.npy``) and ``meta.json`` atomically."""
    gdir = local_dir(gdir)
    _write_arrays(gdir, graph, lists)
    meta = {**meta, "n": graph.n, "k": graph.k}
    save_json(os.path.join(gdir, "meta.json"), meta)


def load_graph(gdir: str, mmap: bool = False, check_ids: bool = True) -> tuple[KnnGraph, dict]:
    """Read a graph directory (``neighbors.npy`` ints and ``distances.npy`` floats, N × k;
    ``meta.json`` when present); ``mmap`` maps the arrays read-only instead of loading them.
    A missing, truncated or inconsistent file is a D2ScaleError. ``check_ids=False`` skips
    the pass over every id (for callers that check them anyway, as ``symmetrize`` does)."""
    gdir = local_dir(gdir)
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
    if check_ids and nbr.size and (nbr.min() < -1 or nbr.max() >= nbr.shape[0]):
        raise D2ScaleError(f"{gdir}/neighbors.npy holds ids outside [-1, {nbr.shape[0]})")
    release_all(nbr)  # a mapped file's pages read by the check need not stay resident
    return KnnGraph(nbr, dist), meta


def load_lists(gdir: str) -> np.ndarray | None:
    """The IVF list of every row (``lists.npy``), or None for graphs built without IVF."""
    path = os.path.join(local_dir(gdir), "lists.npy")
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
    keys = set(old) | set(new)
    if new.get("index") == "exact":  # no recall target (older manifests still hold one)
        keys.discard("recall")
    return ", ".join(
        f"{k}: {old.get(k)!r} then, {new.get(k)!r} now"
        for k in sorted(keys)
        if old.get(k) != new.get(k)
    )


def _jsonable(obj: dict) -> dict:
    return json.loads(json.dumps(obj, default=json_default))
