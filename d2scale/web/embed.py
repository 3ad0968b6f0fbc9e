"""``d2scale embed``: open_clip embeddings of webdataset shards as a DataComp metadata pool.

Every input shard becomes one ``<shard>.parquet`` + ``<shard>.npz`` pair (SPEC §2). The npz
holds ``<prefix>_img`` and ``<prefix>_txt`` (N × d, L2-normalised, float16); the parquet holds
``uid``, ``key``, ``url`` (when the shard's json members have one), ``text``,
``original_width``, ``original_height`` (from the json, else the decoded image), ``sha256``
(of the image bytes) and ``clip_<prefix>_similarity_score`` (float32 image·text cosine).
ViT-B-32 writes the prefix ``b32``, ViT-L-14 ``l14``; other models a prefix made from their
name (``ViT-S-32`` → ``vits32``) unless ``prefix`` is given.

Samples that cannot be used (undecodable image, no image, bad json, malformed uid, a uid
already written, in this shard or an earlier one) are skipped, counted by reason and reported;
they never stop a run. A shard is done when its pair and its entry in ``embed.json`` exist, so
a rerun resumes with the next shard; ``embed.json`` also pins the model, weights, prefix and
seed of the directory. Weights must be named: ``pretrained="none"`` (random weights, for tests)
is a warning recorded in ``embed.json``. A directory holding pool files that are not this
embedding's is refused, as is a shard without its tar end marker (cut short).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from d2scale.backends import resolve_device
from d2scale.errors import D2ScaleError
from d2scale.params import check_option
from d2scale.pool import EMBEDDING_DIMS, UID_DTYPE, encode_uids
from d2scale.progress import Progress
from d2scale.web.params import MODEL_PREFIXES, RANDOM, WEB, wfield
from d2scale.web.webdata import (
    SampleError,
    ShardTally,
    caption,
    checked_manifest,
    expand_shards,
    image_bytes,
    iter_samples,
    metadata,
    refuse_foreign_files,
    sample_uid,
    shard_name,
    ticking,
    warn,
)

MANIFEST = "embed.json"
CHECKPOINT_EXTS = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
POOL_EXTS = (".parquet", ".npz")
RANDOM_WARNING = (
    "random weights (--pretrained none, seed {seed}): the embeddings and "
    "clip_{prefix}_similarity_score carry no meaning; use them for tests, not for selection"
)


@dataclass
class EmbedParams:
    """Everything that determines an ``embed`` output directory (see ``d2scale embed --help``)."""

    shards: str
    out: str
    model: str = wfield("model")
    pretrained: str | None = None  # an open_clip tag, a checkpoint path or "none" (random);
    # None: not given, refused (random weights by accident would look like a pool)
    prefix: str | None = None  # npz key prefix; None: from the model name
    model_config: str | None = None  # open_clip config JSON registering a custom architecture
    batch_size: int = wfield("batch_size")
    device: str = wfield("device")
    threads: int | None = wfield("threads")
    seed: int = wfield("seed")  # seeds random weights (--pretrained none)

    @property
    def resolved_prefix(self) -> str:
        return self.prefix or model_prefix(self.model)

    @property
    def random_weights(self) -> bool:
        return (self.pretrained or "").lower() == RANDOM

    def validate(self) -> EmbedParams:
        if self.pretrained is None:
            raise D2ScaleError(
                "--pretrained is required: an open_clip tag (e.g. openai), a local checkpoint "
                "file, or none for random weights (meaningless embeddings, for tests only)"
            )
        for key in ("device", "batch_size", "threads", "seed"):
            check_option(WEB[key], getattr(self, key))
        if not re.fullmatch(r"[a-z0-9]+", self.resolved_prefix):
            raise D2ScaleError(
                f"the npz prefix must be lowercase letters and digits; got {self.resolved_prefix!r}"
            )
        if self.model_config:
            check_model_config(self.model_config)
        looks_like_file = os.sep in self.pretrained or self.pretrained.endswith(CHECKPOINT_EXTS)
        if looks_like_file and not os.path.isfile(self.pretrained):
            raise D2ScaleError(f"checkpoint file {self.pretrained} (--pretrained) does not exist")
        return self

    def identity(self) -> dict:
        """What must match for a directory to be resumed."""
        keys = ("model", "pretrained", "model_config", "seed")
        return {**{k: asdict(self)[k] for k in keys}, "prefix": self.resolved_prefix}


def check_model_config(path: str) -> None:
    """An open_clip model config: a JSON object with ``embed_dim``, ``vision_cfg``, ``text_cfg``."""
    if not os.path.isfile(path):
        raise D2ScaleError(f"--model-config {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise D2ScaleError(f"--model-config {path} is not valid JSON: {e}") from None
    needed = ("embed_dim", "vision_cfg", "text_cfg")
    if not isinstance(config, dict) or any(k not in config for k in needed):
        raise D2ScaleError(
            f"--model-config {path} is not an open_clip model config (a JSON object with "
            f"{', '.join(needed)})"
        )


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
        self.device = resolve_device(params.device, runtime="torch")
        if params.threads:
            torch.set_num_threads(params.threads)
        if params.model_config:
            open_clip.add_model_config(params.model_config)
        if "/" not in params.model and params.model not in open_clip.list_models():
            raise D2ScaleError(
                f"unknown open_clip model {params.model!r} (open_clip.list_models() names "
                "them; --model-config FILE.json registers a custom one)"
            )
        _check_prefix_width(params, open_clip.get_model_config(params.model))
        pretrained = None if params.random_weights else params.pretrained
        torch.manual_seed(params.seed)
        try:
            with _quiet_logging():
                model, _, self.preprocess = open_clip.create_model_and_transforms(
                    params.model, pretrained=pretrained, device=self.device
                )
                self.tokenizer = open_clip.get_tokenizer(params.model)
        except Exception as e:  # noqa: BLE001 - torch.load and open_clip raise any kind for bad weights
            raise _model_error(params.model, pretrained, e) from None
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


def _check_prefix_width(params: EmbedParams, config: dict | None) -> None:
    """Refuse a prefix that names another width (``--prefix l14`` on a 512-d model): the
    pool's readers would refuse every file of it."""
    width = EMBEDDING_DIMS.get(params.resolved_prefix)
    dim = (config or {}).get("embed_dim")
    if width is not None and dim is not None and int(dim) != width:
        raise D2ScaleError(
            f"the npz prefix {params.resolved_prefix} holds {width}-d embeddings, but "
            f"{params.model} makes {dim}-d ones; give --prefix another name."
        )


def _model_error(model: str, pretrained: str | None, e: Exception) -> D2ScaleError:
    """One sentence for a model that cannot be made (unknown tag, no network, bad file)."""
    reason = f"{type(e).__name__}: {(str(e).split('. ')[0].splitlines() or [''])[0]}"
    if pretrained is not None and os.path.isfile(pretrained):
        return D2ScaleError(
            f"cannot load {pretrained} as weights of open_clip model {model!r} ({reason}); "
            "--pretrained needs a checkpoint (state dict) of this architecture"
        )
    what = "random weights" if pretrained is None else f"weights {pretrained!r}"
    return D2ScaleError(
        f"cannot create open_clip model {model!r} with {what}: {reason} "
        "(a local checkpoint file or 'none' needs no download)"
    )


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


class SeenUids:
    """The uids of the shards written so far, as sorted ``u8,u8`` runs (16 bytes a uid);
    runs merge like a binary counter, so there are at most log2(shards) of them."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def add(self, uids: list[str]) -> None:
        run = np.sort(encode_uids(uids))
        while self.runs and self.runs[-1].size <= run.size:
            run = np.sort(np.concatenate([self.runs.pop(), run]))
        self.runs.append(run)

    def __contains__(self, uid: str) -> bool:
        record = np.array([(int(uid[:16], 16), int(uid[16:], 16))], UID_DTYPE)
        for run in self.runs:
            j = int(np.searchsorted(run, record)[0])
            if j < run.size and run[j] == record[0]:
                return True
        return False


def embed_shard(
    url: str, encoder: ClipEncoder, params: EmbedParams, pool, earlier: SeenUids, on_chunk
) -> dict:
    """Embed one shard and write its pair; return its counts for ``embed.json``.

    ``pool`` decodes images in threads; a uid in ``earlier`` (the shards written before) or
    earlier in this shard is skipped; ``on_chunk(samples)`` reports samples read so far.
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
            if isinstance(item, Prepared):
                item = _unless_repeated(item, seen, earlier)
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
        on_chunk(samples)
    img = np.concatenate(img_parts) if img_parts else np.zeros((0, encoder.dim), np.float32)
    txt = np.concatenate(txt_parts) if txt_parts else np.zeros((0, encoder.dim), np.float32)
    write_pair(params.out, shard_name(url), params.resolved_prefix, rows, img, txt)
    earlier.add([r["uid"] for r in rows])
    return {
        "url": url,
        "samples": samples,
        "written": len(rows),
        "empty_captions": sum(not r["text"] for r in rows),
        "skipped": dict(skipped),
        "skipped_examples": examples,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _unless_repeated(item: Prepared, seen: set[str], earlier: SeenUids) -> Prepared | SampleError:
    uid = item.row["uid"]
    if uid in seen:
        return SampleError("duplicate uid", f"{uid}, earlier in this shard")
    if uid in earlier:
        return SampleError("duplicate uid", f"{uid}, in an earlier shard")
    return item


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


def embed(params: EmbedParams, progress: Progress | None = None) -> dict:
    """Embed every shard of ``params.shards`` not yet done in ``params.out``; return the
    ``embed.json`` record (per-shard and total counts) with ``run`` (this run's counts) and
    ``resumed_shards`` added."""
    progress = progress or Progress()
    params.validate()
    urls = expand_shards(params.shards)
    manifest = _open_directory(params, urls)
    todo = [u for u in urls if not _done(params.out, manifest, shard_name(u))]
    if todo:
        earlier = _written_uids(params.out, manifest, progress)
        with ticking(progress, f"load open_clip model {params.model}"):
            encoder = ClipEncoder(params)
        manifest |= {"dim": encoder.dim, "device": encoder.device}
    _warn_random_weights(params, manifest, progress)  # the model loads; before hours of work
    if todo:
        _embed_shards(todo, encoder, params, manifest, earlier, progress)
    manifest = _with_totals(manifest)
    io.save_json(io.join(params.out, MANIFEST), manifest)
    run = _totals([manifest["shards"][shard_name(u)] for u in todo])
    _check_run(run, io.join(params.out, MANIFEST), progress)
    return {**manifest, "run": run, "resumed_shards": len(urls) - len(todo)}


def _check_run(run: dict, manifest_path: str, progress: Progress) -> None:
    """Refuse a run that embedded nothing; warn about skipped samples and empty captions."""
    if run["samples"] and not run["written"]:
        raise D2ScaleError(
            f"none of the {run['samples']:,} samples of {run['shards']} shards could be "
            f"embedded ({_reasons(run['skipped'])}; examples in {manifest_path}); fix the "
            "shards and start over in an empty directory"
        )
    if run["skipped"]:
        n = sum(run["skipped"].values())
        warn(progress, f"{n:,} of {run['samples']:,} samples skipped: "
                       f"{_reasons(run['skipped'])} (examples in {manifest_path})")  # fmt: skip
    if run["empty_captions"]:
        warn(progress, f"{run['empty_captions']:,} of {run['written']:,} samples have no "
                       "caption: their text embeddings and clip scores are those of an empty "
                       f"text (counted per shard in {manifest_path})")  # fmt: skip


def _open_directory(params: EmbedParams, urls: list[str]) -> dict:
    """The output directory's manifest; refuses one holding pool files of another pool (or a
    download's ``NAME.parquet`` beside ``NAME.tar``, which a pair would overwrite)."""
    io.check_writable(params.out)
    manifest = load_manifest(params)
    names = set(manifest["shards"])
    if io.exists(io.join(params.out, MANIFEST)):  # a killed run may have left a shard's pair
        names |= set(map(shard_name, urls))
    ours = {f"{name}{ext}" for name in names for ext in POOL_EXTS}
    refuse_foreign_files(params.out, POOL_EXTS, ours, "embedding")
    return manifest


def _warn_random_weights(params: EmbedParams, manifest: dict, progress: Progress) -> None:
    """Random weights: a warning line and an entry in ``embed.json``'s ``warnings``."""
    manifest["random_weights"] = params.random_weights
    if params.random_weights:
        text = RANDOM_WARNING.format(seed=params.seed, prefix=params.resolved_prefix)
        manifest["warnings"] = sorted({*manifest.get("warnings", []), text})
        warn(progress, text)


def _embed_shards(
    todo: list[str], encoder: ClipEncoder, params: EmbedParams, manifest: dict,
    earlier: SeenUids, progress: Progress,
) -> None:  # fmt: skip
    """Embed the shards in order, recording each in ``embed.json`` once its pair is written
    (the directory has its ``embed.json`` before the first pair)."""
    io.save_json(io.join(params.out, MANIFEST), _with_totals(manifest))
    with ThreadPoolExecutor(params.threads or os.cpu_count() or 1) as pool:
        for i, url in enumerate(todo):
            tally = ShardTally(progress, f"embed {shard_name(url)} ({i + 1}/{len(todo)} shards)")
            stats = embed_shard(url, encoder, params, pool, earlier, tally)
            tally.done(stats["samples"])
            manifest["shards"][shard_name(url)] = stats
            io.save_json(io.join(params.out, MANIFEST), _with_totals(manifest))


def _written_uids(out: str, manifest: dict, progress: Progress) -> SeenUids:
    """The uids of the directory's finished shards (a uid is written once per directory)."""
    earlier = SeenUids()
    names = [n for n in manifest["shards"] if _done(out, manifest, n)]
    for i, name in enumerate(names):
        path = io.join(out, f"{name}.parquet")
        fs, fs_path = io.filesystem(path)
        try:
            with fs.open(fs_path, "rb") as f:
                earlier.add(pq.read_table(f, columns=["uid"]).column("uid").to_pylist())
        except (OSError, pa.ArrowException) as e:
            raise D2ScaleError(f"cannot read the uids of {path}: {e}") from None
        progress.count("uids of the shards already embedded", i + 1, len(names), "shards")
    return earlier


def _reasons(skipped: dict) -> str:
    """``{"no image": 1, "bad json": 3}`` → ``"3 bad json, 1 no image"`` (most first)."""
    most_first = sorted(skipped.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{n:,} {reason}" for reason, n in most_first)


def load_manifest(params: EmbedParams) -> dict:
    """The directory's ``embed.json``, or a new one; refuses another model's directory."""
    path = io.join(params.out, MANIFEST)
    identity = params.identity()
    manifest = checked_manifest(path, identity, lambda key, got, wanted: (
        f"{params.out} holds embeddings made with {key}={got!r}, not {wanted!r}; use another "
        "--out directory"))  # fmt: skip
    return manifest if manifest is not None else {"command": "embed", **identity, "shards": {}}


def _done(out: str, manifest: dict, name: str) -> bool:
    return name in manifest["shards"] and all(
        io.exists(io.join(out, f"{name}.{ext}")) for ext in ("parquet", "npz")
    )


def _with_totals(manifest: dict) -> dict:
    manifest["totals"] = _totals(list(manifest["shards"].values()))
    return manifest


def _totals(shards: list[dict]) -> dict:
    """Shards, samples read, rows written and skipped samples by reason, summed."""
    skipped: Counter = Counter()
    for s in shards:
        skipped.update(s["skipped"])
    return {
        "shards": len(shards),
        "samples": sum(s["samples"] for s in shards),
        "written": sum(s["written"] for s in shards),
        "empty_captions": sum(s.get("empty_captions", 0) for s in shards),
        "skipped": dict(skipped),
    }
