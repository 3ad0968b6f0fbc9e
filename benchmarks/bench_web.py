"""Throughput of `d2scale embed` and `d2scale export` on generated webdataset shards; prints
one JSON document.

    python benchmarks/bench_web.py [--shards 2] [--per-shard 64] [--size 256]
        [--model ViT-B-32] [--threads 2] [--batch-size 64]

Shards hold real JPEGs (Pillow: gradients and shapes, --size px square, quality 90), a
caption and a DataComp-style json each. `embed` runs in-process with random weights (no
weights can be downloaded here; the cost is the same as with pretrained ones) and is timed
without and with the model start-up; `export` copies a random half of the uids into
shards of 100 samples. The load average is recorded: the dev machine is shared.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
from common import host_info
from PIL import Image, ImageDraw


def jpeg(rng: np.random.Generator, size: int) -> bytes:
    x = np.linspace(0, 1, size)[None, :, None]
    y = np.linspace(0, 1, size)[:, None, None]
    pixels = (rng.integers(0, 256, 3) * (1 - x) + rng.integers(0, 256, 3) * y) % 256
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        draw.ellipse((x0, y0, x0 + size // 3, y0 + size // 4), fill=tuple(rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(root: str, shards: int, per_shard: int, size: int) -> int:
    """Write the shards; return their total size in bytes."""
    rng = np.random.default_rng(0)
    total = 0
    for s in range(shards):
        path = os.path.join(root, f"{s:05d}.tar")
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                meta = {"uid": f"{s:016x}{i:016x}", "url": f"http://example.com/{key}.jpg"}
                members = {"jpg": jpeg(rng, size), "txt": f"a photo number {i} of shard {s}",
                           "json": json.dumps(meta)}  # fmt: skip
                for ext, data in members.items():
                    data = data.encode() if isinstance(data, str) else data
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        total += os.path.getsize(path)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--per-shard", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    from d2scale.pool.uids import encode_uids, subset_array
    from d2scale.web.embed import ClipEncoder, EmbedParams, embed
    from d2scale.web.export import ExportParams, export

    with tempfile.TemporaryDirectory() as root:
        nbytes = write_shards(root, args.shards, args.per_shard, args.size)
        pattern = f"{root}/{{00000..{args.shards - 1:05d}}}.tar"
        n = args.shards * args.per_shard
        params = EmbedParams(shards=pattern, out=f"{root}/pool", model=args.model,
                             threads=args.threads, batch_size=args.batch_size)  # fmt: skip
        t0 = time.perf_counter()
        ClipEncoder(params)
        t_model = time.perf_counter() - t0
        t0 = time.perf_counter()
        record = embed(params, quiet=True)
        t_embed = time.perf_counter() - t0
        assert record["totals"]["written"] == n
        uids = [f"{s:016x}{i:016x}" for s in range(args.shards) for i in range(args.per_shard)]
        chosen = np.random.default_rng(1).choice(uids, size=n // 2, replace=False)
        np.save(f"{root}/subset.npy", subset_array(encode_uids(list(chosen))))
        t0 = time.perf_counter()
        out = export(ExportParams(f"{root}/subset.npy", pattern, f"{root}/out", 100), quiet=True)
        t_export = time.perf_counter() - t0
        assert out["counts"]["written"] == n // 2
    doc = {
        "benchmark": "bench_web",
        "input": {"shards": args.shards, "samples": n, "image_px": args.size,
                  "megabytes": round(nbytes / 1e6, 2)},
        "embed": {"model": args.model, "weights": "random", "device": record.get("device"),
                  "threads": args.threads, "batch_size": args.batch_size,
                  "model_start_s": round(t_model, 2), "seconds": round(t_embed, 2),
                  "samples_per_s": round(n / t_embed, 2),
                  "samples_per_s_excluding_start": round(n / max(t_embed - t_model, 1e-9), 2)},
        "export": {"selected": n // 2, "seconds": round(t_export, 3),
                   "input_samples_per_s": round(n / t_export, 1),
                   "input_mb_per_s": round(nbytes / 1e6 / t_export, 1)},
        "load_average": os.getloadavg(),
        "host": host_info(),
    }  # fmt: skip
    json.dump(doc, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
