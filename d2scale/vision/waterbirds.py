"""Waterbirds (Sagawa et al., 2020) as distributed (``waterbird_complete95_forest2water2/``):
bird photos pasted on land or water backgrounds, described by ``metadata.csv`` with columns
``img_id, img_filename, y, split, place, place_filename``: ``y`` the class (0 landbird,
1 waterbird), ``place`` the background (0 land, 1 water), ``split`` 0/1/2 for
train/val/test, ``img_filename`` relative to the CSV's folder.

The four (class, background) pairs are the groups; the metric is worst-group test accuracy.
The official splits are used as they are (val: best epoch, DRoP recalls, CDB-W; test:
reported). Images are streamed like an ImageFolder (:class:`FolderData`).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from d2scale.errors import D2ScaleError
from d2scale.vision.folder import FolderData

FOLDER = "waterbird_complete95_forest2water2"
CLASSES = ("landbird", "waterbird")
GROUP_NAMES = ("landbird/land", "landbird/water", "waterbird/land", "waterbird/water")
SPLIT_CODES = {"0": "train", "1": "val", "2": "test"}
COLUMNS = ("img_filename", "y", "split", "place")
CROP_SCALE = (0.7, 1.0)  # random-resized crops keep most of the bird (as group-DRO training)


def open_waterbirds(data_dir: str | None, *, device, image_size=224, resize=256, workers=None):
    """The dataset as a :class:`FolderData` with ``groups`` (``2·y + place``) per split."""
    if not data_dir:
        raise D2ScaleError("--dataset waterbirds needs --data-dir holding metadata.csv.")
    root = _find_root(data_dir)
    rows = read_metadata(os.path.join(root, "metadata.csv"))
    paths, labels, groups = {}, {}, {}
    for split in SPLIT_CODES.values():
        mine = [r for r in rows if r[1] == split]
        if not mine:
            raise D2ScaleError(f"{root}/metadata.csv has no {split} rows (split column).")
        paths[split] = [os.path.join(root, r[0]) for r in mine]
        labels[split] = np.array([r[2] for r in mine], dtype=np.int64)
        groups[split] = np.array([2 * r[2] + r[3] for r in mine], dtype=np.int64)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    return FolderData(
        list(CLASSES), paths, labels, device, image_size, resize, max(1, workers),
        name="waterbirds", groups=groups, group_names=list(GROUP_NAMES), crop_scale=CROP_SCALE,
    )  # fmt: skip


def _find_root(data_dir: str) -> str:
    for root in (os.path.join(data_dir, FOLDER), data_dir):
        if os.path.isfile(os.path.join(root, "metadata.csv")):
            return root
    raise D2ScaleError(f"no Waterbirds in {data_dir}: expected metadata.csv (or {FOLDER}/).")


def read_metadata(path: str) -> list[tuple[str, str, int, int]]:
    """``(img_filename, split name, y, place)`` per row, checked."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise D2ScaleError(f"{path} lacks the column(s) {', '.join(missing)}.")
        rows = []
        for number, row in enumerate(reader, 2):
            y, place, split = row["y"].strip(), row["place"].strip(), row["split"].strip()
            if y not in ("0", "1") or place not in ("0", "1") or split not in SPLIT_CODES:
                raise D2ScaleError(
                    f"{path} line {number}: y and place must be 0 or 1 and split 0, 1 or 2; "
                    f"got y={y!r}, place={place!r}, split={split!r}."
                )
            rows.append((row["img_filename"].strip(), SPLIT_CODES[split], int(y), int(place)))
    return rows
