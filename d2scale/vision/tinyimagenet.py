"""TinyImageNet as distributed (``tiny-imagenet-200``): 200 classes (``wnids.txt``) of 64×64
JPEGs, ``train/<wnid>/images/*.JPEG`` (500 per class) and ``val/images/*.JPEG`` (50 per
class) whose classes are listed in ``val/val_annotations.txt`` (tab-separated: file name,
wnid, bounding box). ``test/`` has no labels and is not used.

Decoded once with Pillow into uint8 arrays (the whole set is 1.2 GB) and then held like
CIFAR (see :mod:`d2scale.vision.data`). An unreadable image is skipped and counted.
"""

from __future__ import annotations

import os

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.vision.folder import IMAGE_EXTENSIONS
from d2scale.vision.meter import meter

FOLDER = "tiny-imagenet-200"
SIDE = 64  # pixels, both sides


def load_tinyimagenet(data_dir: str | None, progress=None):
    """``((train images, labels), (val images, labels), wnids, unreadable paths)``; images
    uint8 (N, 3, 64, 64), class ids index the sorted ``wnids``."""
    if not data_dir:
        raise D2ScaleError(f"--dataset tinyimagenet needs --data-dir holding {FOLDER}/.")
    root = _find_root(data_dir)
    wnids = _read_wnids(os.path.join(root, "wnids.txt"))
    bad: list[str] = []
    train = _decode(_train_files(root, wnids), "train", progress, bad)
    val = _decode(_val_files(root, {w: i for i, w in enumerate(wnids)}), "val", progress, bad)
    if len(train[1]) == 0:
        raise D2ScaleError(f"{root}/train holds no readable image.")
    return train, val, wnids, bad


def _find_root(data_dir: str) -> str:
    for root in (os.path.join(data_dir, FOLDER), data_dir):
        if os.path.isfile(os.path.join(root, "wnids.txt")):
            return root
    raise D2ScaleError(
        f"no TinyImageNet in {data_dir}: expected {FOLDER}/wnids.txt with train/ and "
        "val/val_annotations.txt beside it."
    )


def _read_wnids(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        wnids = sorted({line.strip() for line in f if line.strip()})
    if not wnids:
        raise D2ScaleError(f"{path} lists no class.")
    return wnids


def _train_files(root: str, wnids: list[str]) -> list[tuple[str, int]]:
    files = []
    for label, wnid in enumerate(wnids):
        d = os.path.join(root, "train", wnid, "images")
        if not os.path.isdir(d):
            raise D2ScaleError(f"{d} is missing: every class of wnids.txt needs train images.")
        names = sorted(e.name for e in os.scandir(d) if e.name.lower().endswith(IMAGE_EXTENSIONS))
        files += [(os.path.join(d, n), label) for n in names]
    return files


def _val_files(root: str, index: dict[str, int]) -> list[tuple[str, int]]:
    path = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.isfile(path):
        raise D2ScaleError(f"{path} is missing: it gives the classes of val/images/.")
    files = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise D2ScaleError(
                    f"{path} line {number}: expected '<file>\\t<wnid>\\t…' with a wnid of "
                    f"wnids.txt; got {line.strip()[:80]!r}."
                )
            files.append((os.path.join(root, "val", "images", fields[0]), index[fields[1]]))
    if not files:
        raise D2ScaleError(f"{path} lists no image.")
    return files


def _decode(files, split: str, progress, bad: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``(path, label)`` pairs; unreadable paths go to ``bad``."""
    x = np.empty((len(files), 3, SIDE, SIDE), dtype=np.uint8)
    labels = []
    step = meter(progress, f"decode tinyimagenet {split}", len(files), "images")
    for i, (path, label) in enumerate(files):
        image = _read(path)
        if image is None:
            bad.append(path)
        else:
            x[len(labels)] = image
            labels.append(label)
        step(i + 1)
    return x[: len(labels)], np.asarray(labels, dtype=np.int64)


def _read(path: str) -> np.ndarray | None:
    """(3, 64, 64) uint8 RGB (grayscale images converted), or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if rgb.size != (SIDE, SIDE):
        raise D2ScaleError(f"{path} is {rgb.size[0]}×{rgb.size[1]}; TinyImageNet images are 64×64.")
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
