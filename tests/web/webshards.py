"""Tiny webdataset shards with real JPEGs (Pillow), written by the tests themselves."""

import io
import json
import tarfile

import numpy as np
from PIL import Image, ImageDraw

WORDS = [
    "red",
    "green",
    "blue",
    "small",
    "large",
    "cat",
    "dog",
    "house",
    "tree",
    "car",
    "boat",
    "sky",
    "river",
    "photo",
    "of",
    "a",
]


def jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A real JPEG: a colour gradient with a few random rectangles and ellipses."""
    base = rng.integers(0, 256, size=3)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    pixels = (base * (1 - x) + rng.integers(0, 256, size=3) * y) % 256
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        box = (
            x0,
            y0,
            x0 + int(rng.integers(4, width // 2)),
            y0 + int(rng.integers(4, height // 2)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_shard(path: str, samples: list[dict]) -> None:
    """Write ``samples`` ({"__key__": k, ext: bytes}) as a tar, members in sample order."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def make_samples(rng, start: int, count: int, *, with_uid: bool = True) -> list[dict]:
    """``count`` samples: jpg, txt, json (uid, url, original size) and an extra ``cls``."""
    samples = []
    for i in range(start, start + count):
        w, h = int(rng.integers(24, 80)), int(rng.integers(24, 80))
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 8))))
        meta = {
            "url": f"http://example.com/{i}.jpg",
            "original_width": 4 * w,
            "original_height": 4 * h,
            "caption": text,
        }
        if with_uid:
            meta["uid"] = f"{int(rng.integers(0, 2**62)):016x}{i:016x}"
        samples.append(
            {
                "__key__": f"{i:08d}",
                "jpg": jpeg(rng, w, h),
                "txt": text.encode(),
                "json": json.dumps(meta).encode(),
                "cls": str(i % 7).encode(),
            }
        )
    return samples
