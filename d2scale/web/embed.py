"""``d2scale embed``: open_clip embeddings of webdataset shards as a DataComp metadata pool.

Every input shard becomes one ``<shard>.parquet`` + ``<shard>.npz`` pair (SPEC §2). The npz
holds ``<prefix>_img`` and ``<prefix>_txt`` (N × d, L2-normalised, float16); the parquet holds
``uid``, ``key``, ``url`` (when the shard's json members have one), ``text``,
``original_width``, ``original_height`` (from the json, else the decoded image), ``sha256``
(of the image bytes) and ``clip_<prefix>_similarity_score`` (float32 image·text cosine).
ViT-B-32 writes the prefix ``b32``, ViT-L-14 ``l14``; other models a prefix made from their
name (``ViT-S-32`` → ``vits32``) unless ``prefix`` is given.

Samples that cannot be used (undecodable image, no image, bad json, malformed or repeated
uid) are skipped, counted by reason and reported; they never stop a run. A shard is done
when its pair and its entry in ``embed.json`` exist, so a rerun resumes with the next shard;
``embed.json`` also pins the model, weights, prefix and seed of the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from io import BytesIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2scale import io
from d2scale.errors import D2ScaleError
from d2scale.web.webdata import (
    SampleError,
    caption,
    expand_shards,
    image_bytes,
    iter_samples,
    metadata,
    progress_bar,
    sample_uid,
    shard_name,
)

MODEL_PREFIXES = {"ViT-B-32": "b32", "ViT-L-14": "l14"}
MANIFEST = "embed.json"
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_EXTS = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class EmbedParams:
    """Everything that determines an ``embed`` output directory (see ``d2scale embed --help``)."""

    shards: str
    out: str
    model: str = "ViT-B-32"
    pretrained: str = "none"  # an open_clip tag, a checkpoint path, or "none" (random weights)
    prefix: str | None = None  # npz key prefix; None: from the model name
    model_config: str | None = None  # open_clip config JSON registering a custom architecture
    batch_size: int = 64
    device: str = "auto"
    threads: int | None = None
    seed: int = 0  # seeds random weights (--pretrained none)

    @property
    def resolved_prefix(self) -> str:
        return self.prefix or model_prefix(self.model)

    def validate(self) -> EmbedParams:
        if self.device not in DEVICES:
            raise D2ScaleError(f"--device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.batch_size < 1:
            raise D2ScaleError(f"--batch-size must be ≥ 1; got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise D2ScaleError(f"--threads must be ≥ 1; got {self.threads}")
        if not re.fullmatch(r"[a-z0-9]+", self.resolved_prefix):
            raise D2ScaleError(
                f"the npz prefix must be lowercase letters and digits; got {self.resolved_prefix!r}"
            )
        if self.model_config and not os.path.isfile(self.model_config):
            raise D2ScaleError(f"--model-config {self.model_config} does not exist")
        looks_like_file = os.sep in self.pretrained or self.pretrained.endswith(CHECKPOINT_EXTS)
        if looks_like_file and not os.path.isfile(self.pretrained):
            raise D2ScaleError(f"checkpoint file {self.pretrained} (--pretrained) does not exist")
        return self

    def identity(self) -> dict:
        """What must match for a directory to be resumed."""
        keys = ("model", "pretrained", "model_config", "seed")
        return {**{k: asdict(self)[k] for k in keys}, "prefix": self.resolved_prefix}


def model_prefix(model: str) -> str:
    """``ViT-B-32`` → ``b32``, ``ViT-L-14`` → ``l14``, others: lowercase alphanumerics."""
    if model in MODEL_PREFIXES:
        return MODEL_PREFIXES[model]
    return re.sub(r"[^a-z0-9]", "", model.rsplit("/", 1)[-1].lower())


# --- the model -------------------------------------------------------------------------


class ClipEncoder:
    """open_clip image and text towers; ``encode`` returns unit-length float32 embeddings."""

    def __init__(self, params: EmbedParams) -> None:
        try:
            import torch

            from d2scale.torch_compat import ensure_torchvision

            ensure_torchvision()
            import open_clip
        except ImportError as e:
            raise D2ScaleError(
                f"d2scale embed needs torch and open_clip ({e.name or e} is missing): "
                "pip install -c constraints.txt 'd2scale[vision]'"
            ) from None

        self.torch = torch
        self.device = _resolve_device(params.device, torch)
        if params.threads:
            torch.set_num_threads(params.threads)
        if params.model_config:
            open_clip.add_model_config(params.model_config)
        if "/" not in params.model and params.model not in open_clip.list_models():
            raise D2ScaleError(
                f"unknown open_clip model {params.model!r} (open_clip.list_models() names "
                "them; --model-config FILE.json registers a custom one)"
            )
        pretrained = None if params.pretrained.lower() == "none" else params.pretrained
        torch.manual_seed(params.seed)
        try:
            with _quiet_logging():
                model, _, self.preprocess = open_clip.create_model_and_transforms(
                    params.model, pretrained=pretrained, device=self.device
                )
                self.tokenizer = open_clip.get_tokenizer(params.model)
        except (RuntimeError, OSError, ValueError) as e:
            what = "random weights" if pretrained is None else f"weights {pretrained!r}"
            reason = str(e).split(". ")[0].splitlines()[0]
            raise D2ScaleError(
                f"cannot create open_clip model {params.model!r} with {what}: {reason} "
                "(a local checkpoint file or 'none' needs no download)"
            ) from None
        self.model = model.eval()
        self.dim = int(open_clip.get_model_config(params.model)["embed_dim"])

    def encode(self, pixels: list, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Image and text embeddings of one batch, L2-normalised, float32 (N × dim)."""
        torch = self.torch
        cuda = self.device == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            images = torch.stack(pixels).to(self.device, non_blocking=cuda)
            img = self.model.encode_image(images)
            txt = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return _unit(img.float().cpu().numpy()), _unit(txt.float().cpu().numpy())


def _resolve_device(device: str, torch) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise D2ScaleError("--device cuda was given but torch sees no CUDA GPU")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@contextlib.contextmanager
def _quiet_logging():
    """open_clip logs on the root logger and huggingface_hub on its own; a failure becomes
    our one-line error, and random weights are recorded in ``embed.json``."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _unit(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1, keepdims=True)
    return (x64 / np.where(norms > 0, norms, 1.0)).astype(np.float32)


# --- samples ---------------------------------------------------------------------------


@dataclass
class Prepared:
    """One usable sample: its parquet row and its preprocessed image tensor."""

    row: dict
    pixels: object


def prepare(sample: dict, preprocess) -> Prepared:
    """Decode one raw sample (Pillow) into its parquet row and image tensor.

    Raises :class:`SampleError` with a short ``reason`` when the sample is unusable.
    """
    from PIL import Image, UnidentifiedImageError

    meta = metadata(sample)
    text = caption(sample, meta)
    uid = sample_uid(sample, meta, text)
    data = image_bytes(sample)
    try:
        with Image.open(BytesIO(data)) as im:
            im.load()
            image = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise SampleError("undecodable image", str(e)) from None
    row = {
        "uid": uid,
        "key": sample["__key__"],
        "url": meta.get("url"),
        "text": text,
        "original_width": _int_or(meta.get("original_width"), image.width),
        "original_height": _int_or(meta.get("original_height"), image.height),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return Prepared(row, preprocess(image))


def _int_or(value, default: int) -> int:
    try:
        return int(value) if value is not None else int(default)
    except (TypeError, ValueError):
        return int(default)


def _try_prepare(sample: dict, preprocess) -> Prepared | SampleError:
    try:
        return prepare(sample, preprocess)
    except SampleError as e:
        return e


def _chunks(iterable, size: int):
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- shards ----------------------------------------------------------------------------


def embed_shard(url: str, encoder: ClipEncoder, params: EmbedParams, pool, on_chunk) -> dict:
    """Embed one shard and write its pair; return its counts for ``embed.json``.

    ``pool`` decodes images in threads; ``on_chunk(samples, skipped)`` reports progress.
    """
    t0 = time.perf_counter()
    rows: list[dict] = []
    img_parts, txt_parts = [], []
    skipped: Counter = Counter()
    examples: list[str] = []
    seen: set[str] = set()
    samples = 0
    for chunk in _chunks(iter_samples(url), params.batch_size):
        good = []
        prepared = pool.map(lambda s: _try_prepare(s, encoder.preprocess), chunk)
        for raw, item in zip(chunk, prepared, strict=True):
            samples += 1
            if isinstance(item, Prepared) and item.row["uid"] in seen:
                item = SampleError("duplicate uid", item.row["uid"])
            if isinstance(item, SampleError):
                skipped[item.reason] += 1
                if len(examples) < 5:
                    examples.append(f"{raw.get('__key__')}: {item.reason} ({item.detail})")
                continue
            seen.add(item.row["uid"])
            good.append(item)
        if good:
            img, txt = encoder.encode([g.pixels for g in good], [g.row["text"] for g in good])
            img_parts.append(img)
            txt_parts.append(txt)
            rows += [g.row for g in good]
        on_chunk(len(chunk), len(chunk) - len(good))
    img = np.concatenate(img_parts) if img_parts else np.zeros((0, encoder.dim), np.float32)
    txt = np.concatenate(txt_parts) if txt_parts else np.zeros((0, encoder.dim), np.float32)
    write_pair(params.out, shard_name(url), params.resolved_prefix, rows, img, txt)
    return {
        "url": url,
        "samples": samples,
        "written": len(rows),
        "skipped": dict(skipped),
        "skipped_examples": examples,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def write_pair(
    out: str, name: str, prefix: str, rows: list[dict], img: np.ndarray, txt: np.ndarray
) -> None:
    """``<name>.npz`` (float16 members), then ``<name>.parquet``, each atomically."""
    io.save_npz(
        io.join(out, f"{name}.npz"),
        **{f"{prefix}_img": img.astype(np.float16), f"{prefix}_txt": txt.astype(np.float16)},
    )
    columns = {"uid": pa.string(), "key": pa.string(), "url": pa.string(), "text": pa.string()}
    columns |= {"original_width": pa.int64(), "original_height": pa.int64(), "sha256": pa.string()}
    if not any(r["url"] for r in rows):
        del columns["url"]
    table = pa.table({c: pa.array([r[c] for r in rows], t) for c, t in columns.items()})
    score = np.einsum("ij,ij->i", img.astype(np.float64), txt.astype(np.float64))
    table = table.append_column(
        f"clip_{prefix}_similarity_score", pa.array(score.astype(np.float32), pa.float32())
    )
    with io.atomic_path(io.join(out, f"{name}.parquet")) as tmp:
        pq.write_table(table, tmp)


# --- the command -----------------------------------------------------------------------


def embed(params: EmbedParams, *, quiet: bool = False) -> dict:
    """Embed every shard of ``params.shards`` not yet done in ``params.out``; return the
    ``embed.json`` record (per-shard and total counts)."""
    params.validate()
    urls = expand_shards(params.shards)
    io.check_writable(params.out)
    manifest = load_manifest(params)
    todo = [u for u in urls if not _done(params.out, manifest, shard_name(u))]
    if todo:
        encoder = ClipEncoder(params)
        manifest["dim"] = encoder.dim
        manifest["device"] = encoder.device
        threads = params.threads or os.cpu_count() or 1
        with (
            ThreadPoolExecutor(threads) as pool,
            progress_bar("embed", quiet) as bar,
        ):
            skipped = [0]

            def on_chunk(samples: int, bad: int) -> None:
                skipped[0] += bad
                bar.set_postfix(skipped=skipped[0], refresh=False)
                bar.update(samples)

            for i, url in enumerate(todo):
                bar.set_description(f"embed shard {i + 1}/{len(todo)}")
                stats = embed_shard(url, encoder, params, pool, on_chunk)
                manifest["shards"][shard_name(url)] = stats
                io.save_json(io.join(params.out, MANIFEST), _with_totals(manifest))
    manifest = _with_totals(manifest)
    io.save_json(io.join(params.out, MANIFEST), manifest)
    manifest["resumed_shards"] = len(urls) - len(todo)
    return manifest


def load_manifest(params: EmbedParams) -> dict:
    """The directory's ``embed.json``, or a new one; refuses another model's directory."""
    path = io.join(params.out, MANIFEST)
    identity = params.identity()
    if not io.exists(path):
        return {"command": "embed", **identity, "shards": {}}
    try:
        manifest = io.read_json(path)
    except (OSError, ValueError) as e:
        raise D2ScaleError(f"cannot read {path}: {e}; remove it to start over") from None
    for key, value in identity.items():
        if manifest.get(key) != value:
            raise D2ScaleError(
                f"{params.out} holds embeddings made with {key}={manifest.get(key)!r}, not "
                f"{value!r}; use another --out directory"
            )
    return manifest


def _done(out: str, manifest: dict, name: str) -> bool:
    return name in manifest["shards"] and all(
        io.exists(io.join(out, f"{name}.{ext}")) for ext in ("parquet", "npz")
    )


def _with_totals(manifest: dict) -> dict:
    shards = manifest["shards"].values()
    skipped: Counter = Counter()
    for s in shards:
        skipped.update(s["skipped"])
    manifest["totals"] = {
        "shards": len(manifest["shards"]),
        "samples": sum(s["samples"] for s in shards),
        "written": sum(s["written"] for s in shards),
        "skipped": dict(skipped),
    }
    return manifest
