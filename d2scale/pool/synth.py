"""Synthetic DataComp-format pools whose embedding geometry resembles real CLIP embeddings.

Each sample has a latent point ``z`` in a ~48-d space (clusters of uneven size, a spread
around each centre); every embedding is ``a·mean + P·z/√L + noise`` normalised, with one
shared mean direction per embedding space (random pairs at cosine ≈ 0.3–0.4) and its own
noise (nearest neighbours at cosine ≈ 0.85–0.9). Text embeddings share a per-sample fraction
``q`` of the image's latent, and the CLIP score columns are the cosines of the stored
image/text pairs, so scores and embeddings agree. About 1% of the rows repeat an earlier
image exactly (half of them with the same text too) and 2% are near-duplicates.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.io import atomic_path
from d2scale.params import SYNTH_LAYOUTS, SYNTH_MEMBERS

STAGING = ".synth-partial"  # where a run writes its shards until all are written
LATENT_DIM = 48
LAYOUTS = SYNTH_LAYOUTS  # "mixed" cycles through them by shard
MEMBERS = SYNTH_MEMBERS  # every npz member a synthetic pool can hold
_WORDS = [
    "photo",
    "of",
    "a",
    "dog",
    "cat",
    "car",
    "house",
    "tree",
    "river",
    "city",
    "beach",
    "mountain",
    "street",
    "food",
    "plate",
    "logo",
    "shirt",
    "shoe",
    "poster",
    "drawing",
    "chart",
    "phone",
    "table",
    "chair",
    "flower",
    "bird",
    "sky",
    "night",
    "sale",
    "new",
    "red",
    "blue",
    "green",
    "vintage",
    "modern",
    "art",
    "design",
    "wedding",
    "portrait",
    "landscape",
    "map",
    "icon",
    "vector",
]


@dataclass(frozen=True)
class _Space:
    """One embedding space (e.g. ViT-L/14 at 768-d): a mean direction and a projection."""

    mean: np.ndarray
    proj: np.ndarray

    @classmethod
    def make(cls, rng: np.random.Generator, dim: int) -> _Space:
        mean = _unit(rng.standard_normal(dim))
        proj = np.linalg.qr(rng.standard_normal((dim, LATENT_DIM)))[0]
        proj -= np.outer(mean, mean @ proj)  # keep the latent part orthogonal to the mean
        return cls(mean, proj)

    def embed(self, z: np.ndarray, rng: np.random.Generator, noise: float = 0.35) -> np.ndarray:
        """Unit float32 embeddings of latents ``z`` (in place where possible: same values)."""
        dim = self.mean.shape[0]
        x = z @ self.proj.T
        x /= np.sqrt(LATENT_DIM)
        x += 0.8 * self.mean
        eps = rng.standard_normal((z.shape[0], dim))
        eps *= noise / np.sqrt(dim)
        x += eps
        del eps
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        return x.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_pool(
    out: str,
    *,
    rows: int,
    shards: int = 1,
    seed: int = 0,
    layout: str = "f16-compressed",
    embeddings: tuple[str, ...] = MEMBERS,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Write ``shards`` parquet+npz pairs with ``rows`` samples in all to directory ``out``.

    Returns the shard base names. Deterministic for a given (rows, shards, seed, layout).
    ``embeddings`` names the npz members written (all four by default; the others are still
    generated, so every value and score column is the same whichever are written).
    A directory holding other .parquet/.npz files is refused (they would join the pool).
    ``progress`` hears ``"synth: i/n shards"`` as shards are written.
    """
    if rows < 1 or shards < 1 or shards > rows:
        raise D2ScaleError(f"need rows ≥ shards ≥ 1, got rows={rows}, shards={shards}")
    if layout not in (*LAYOUTS, "mixed"):
        raise D2ScaleError(f"layout must be one of {', '.join(LAYOUTS)}, mixed; got {layout!r}")
    unknown = sorted(set(embeddings) - set(MEMBERS)) or ([] if embeddings else ["(none)"])
    if unknown:
        raise D2ScaleError(f"embeddings must name some of {', '.join(MEMBERS)}; got {unknown[0]}")
    names = [f"{s:08d}" for s in range(shards)]
    out = io.local_path(out) if io.is_local(out) else out  # file://: its local directory
    _refuse_other_pool_files(out, names)
    io.check_writable(out)
    # every shard is written into a staging subdirectory (which readers skip) and the pairs
    # are moved in at the end: a killed run leaves no smaller pool that looks complete
    staging = io.join(out, STAGING)
    io.remove(staging, recursive=True)
    plan = _Plan(staging, rows, shards, seed, layout, tuple(embeddings))
    say = progress or (lambda message: None)
    say(f"synth: 0/{shards} shards")
    # numpy's draws, BLAS and zlib release the GIL: two shards at a time use both cores
    with ThreadPoolExecutor(max_workers=min(2, shards)) as ex:
        for i, _ in enumerate(ex.map(plan.write, range(shards)), 1):
            say(f"synth: {i}/{shards} shards")
    for name in (f"{n}{ext}" for n in names for ext in (".npz", ".parquet")):
        io.move(io.join(staging, name), io.join(out, name))
    io.remove(staging, recursive=True)
    return names


@dataclass(frozen=True)
class _Plan:
    """What determines a pool; ``write(s)`` makes shard ``s`` from it alone."""

    out: str
    rows: int
    shards: int
    seed: int
    layout: str
    embeddings: tuple[str, ...]

    def write(self, s: int) -> None:
        n_clusters, centres, weights, spaces = _setup(self.rows, self.seed)
        bounds = np.linspace(0, self.rows, self.shards + 1).astype(int)
        srng = np.random.default_rng([self.seed, s])
        n = int(bounds[s + 1] - bounds[s])
        cluster = srng.choice(n_clusters, size=n, p=weights)
        z = centres[cluster] + 0.4 * srng.standard_normal((n, LATENT_DIM))
        arrays = _embeddings(z, spaces, srng)
        _plant_duplicates(arrays, srng)
        table = _metadata(arrays, cluster, srng)
        layout = self.layout if self.layout != "mixed" else LAYOUTS[s % len(LAYOUTS)]
        kept = {key: arrays[key] for key in MEMBERS if key in self.embeddings}
        _write_shard(self.out, f"{s:08d}", table, kept, layout)


@functools.lru_cache(maxsize=2)
def _setup(rows: int, seed: int) -> tuple[int, np.ndarray, np.ndarray, dict[str, _Space]]:
    """The pool-wide draws: cluster centres and weights, one space per embedding model."""
    rng = np.random.default_rng(seed)
    n_clusters = max(8, rows // 150)
    centres = rng.standard_normal((n_clusters, LATENT_DIM))
    weights = rng.lognormal(0.0, 1.0, n_clusters)
    weights /= weights.sum()
    spaces = {name: _Space.make(rng, d) for name, d in (("l14", 768), ("b32", 512))}
    return n_clusters, centres, weights, spaces


def _refuse_other_pool_files(out: str, names: list[str]) -> None:
    """An older pool's shards left beside the new ones would silently become part of it."""
    ours = {f"{name}{ext}" for name in names for ext in (".parquet", ".npz")}
    others = sorted(
        f for f in io.listdir(out) if f.lower().endswith((".parquet", ".npz")) and f not in ours
    )
    if others:
        raise D2ScaleError(
            f"{out} already holds {others[0]} ({len(others)} pool files in all) that this pool "
            "would not replace, so they would become part of it; write into an empty "
            "directory or remove them"
        )


def _embeddings(z: np.ndarray, spaces: dict[str, _Space], rng) -> dict[str, np.ndarray]:
    n = z.shape[0]
    q = rng.beta(4.0, 5.0, size=(n, 1))  # how much of the image the caption describes
    z_txt = q * z + np.sqrt(1 - q**2) * rng.standard_normal((n, LATENT_DIM))
    out = {}
    for name, space in spaces.items():
        out[f"{name}_img"] = space.embed(z, rng)
        txt_space = _Space(_unit(np.roll(space.mean, 1)), space.proj)
        out[f"{name}_txt"] = txt_space.embed(z_txt, rng)
    return out


def _plant_duplicates(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Rows that repeat an earlier row exactly (1%) or nearly (2%), within the shard."""
    n = next(iter(arrays.values())).shape[0]
    if n < 10:
        return
    picks = rng.choice(np.arange(1, n), size=max(1, int(0.03 * n)), replace=False)
    sources = (rng.random(picks.size) * picks).astype(int)  # an earlier row
    n_exact = picks.size // 3
    for key, emb in arrays.items():
        exact, near = picks[:n_exact], picks[n_exact:]
        if key.endswith("_img") or rng.random() < 0.5:
            emb[exact] = emb[sources[:n_exact]]
        if key.endswith("_img"):
            jitter = 0.05 / np.sqrt(emb.shape[1]) * rng.standard_normal((near.size, emb.shape[1]))
            emb[near] = _unit(emb[sources[n_exact:]] + jitter).astype(np.float32)


def _metadata(arrays: dict[str, np.ndarray], cluster: np.ndarray, rng) -> pa.Table:
    n = cluster.shape[0]
    uids = _hex_strings(rng, n, 16)
    sha = _hex_strings(rng, n, 32)
    words = np.array(_WORDS)
    text = [" ".join(words[(c + rng.integers(0, 7, 4)) % len(words)]) for c in cluster]
    faces = [
        [] if rng.random() > 0.1 else [[float(v) for v in np.sort(rng.random(4)).round(3)]]
        for _ in range(n)
    ]
    cols = {
        "uid": pa.array(uids, pa.string()),
        "url": pa.array([f"https://img.example.com/{u[:12]}.jpg" for u in uids], pa.string()),
        "text": pa.array(text, pa.string()),
        "original_width": pa.array(rng.integers(64, 2048, n), pa.int64()),
        "original_height": pa.array(rng.integers(64, 2048, n), pa.int64()),
    }
    for name in ("b32", "l14"):
        cos = np.einsum("ij,ij->i", arrays[f"{name}_img"], arrays[f"{name}_txt"])
        cols[f"clip_{name}_similarity_score"] = pa.array(cos.astype(np.float32), pa.float32())
    cols["face_bboxes"] = pa.array(faces, pa.list_(pa.list_(pa.float64())))
    cols["sha256"] = pa.array(sha, pa.string())
    return pa.table(cols)


def _hex_strings(rng: np.random.Generator, n: int, n_bytes: int) -> list[str]:
    raw = rng.integers(0, 256, size=(n, n_bytes), dtype=np.uint8).tobytes().hex()
    step = 2 * n_bytes
    return [raw[i : i + step] for i in range(0, n * step, step)]


def _write_shard(out: str, name: str, table: pa.Table, arrays: dict, layout: str) -> None:
    dtype_name, storage = layout.split("-")
    dtype = np.float16 if dtype_name == "f16" else np.float32
    save = np.savez_compressed if storage == "compressed" else np.savez
    with atomic_path(os.path.join(out, f"{name}.npz")) as tmp, open(tmp, "wb") as f:
        save(f, **{k: v.astype(dtype) for k, v in arrays.items()})
    with atomic_path(os.path.join(out, f"{name}.parquet")) as tmp:
        pq.write_table(table, tmp)


def sample_pool_dir(rows: int = 100_000, seed: int = 0) -> str:
    """The built-in sample pool (made once, cached in the user cache directory)."""
    from platformdirs import user_cache_dir

    root = os.environ.get("D2SCALE_CACHE_DIR") or user_cache_dir("d2scale")
    path = os.path.join(root, f"sample-pool-v1-{rows}-seed{seed}")
    if not os.path.exists(os.path.join(path, "_COMPLETE")):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".sample-pool-", dir=root)
        write_pool(tmp, rows=rows, shards=4, seed=seed)
        open(os.path.join(tmp, "_COMPLETE"), "w").close()
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return path
