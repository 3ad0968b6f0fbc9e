"""ImageFolder trees (ImageNet layout: ``train/<class>/<image>``, ``val/<class>/<image>``),
and any listed image files (Waterbirds), streamed through a ``DataLoader`` and decoded with
Pillow, never loaded whole. An image that cannot be read is skipped and remembered in
``unreadable`` (the trainer warns and records the count) instead of failing the run midway."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from d2scale.errors import D2ScaleError
from d2scale.vision.meter import meter
from d2scale.vision.splits import holdout_halves, index_tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Images(Dataset):
    """(image tensor, label, position) of the listed files, decoded with Pillow."""

    def __init__(self, paths: list[str], labels: np.ndarray, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as im:
                x = self.transform(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None, int(self.labels[i]), i  # unreadable: dropped by _collate
        return x, int(self.labels[i]), i


def _collate(items):
    """A batch of the readable items (None when there is none) and the unreadable positions."""
    good = [item for item in items if item[0] is not None]
    bad = [item[2] for item in items if item[0] is None]
    return (default_collate(good) if good else None), bad


class FolderData:
    """An ImageFolder dataset: ``train`` from ``train/``; ``val`` and ``test`` are the two
    per-class halves of ``val/`` (see :mod:`d2scale.vision.data`)."""

    in_channels = 3

    def __init__(
        self, classes, paths, labels, device, image_size, resize, workers, *, name="imagenet",
        groups=None, group_names=None, crop_scale=(0.08, 1.0),
    ):  # fmt: skip
        self.name = name
        self.classes = classes
        self.num_classes = len(classes)
        self.paths, self.labels = paths, labels  # split -> list[str], np.ndarray
        self.groups, self.group_names = groups, group_names  # split -> group ids (Waterbirds)
        self.device = device
        self.image_size, self.resize, self.crop_scale = image_size, resize, crop_scale
        self.workers = workers
        self.unreadable: set[str] = set()

    @classmethod
    def open(
        cls,
        root: str,
        *,
        device: torch.device,
        image_size: int = 224,
        resize: int = 256,
        workers: int | None = None,
        progress=None,
    ) -> FolderData:
        train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
        for d in (train_dir, val_dir):
            if not os.path.isdir(d):
                raise D2ScaleError(f"{d} is missing: an ImageFolder root holds train/ and val/.")
        classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
        if not classes:
            raise D2ScaleError(f"{train_dir} holds no class directories.")
        tr_paths, tr_labels = _scan(train_dir, classes, progress)
        ho_paths, ho_labels = _scan(val_dir, classes, progress)
        val, test = holdout_halves(ho_labels)
        paths = {"train": tr_paths, "val": [ho_paths[i] for i in val]}
        paths["test"] = [ho_paths[i] for i in test]
        labels = {"train": tr_labels, "val": ho_labels[val], "test": ho_labels[test]}
        workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        return cls(classes, paths, labels, device, image_size, resize, max(1, workers))

    def size(self, split: str) -> int:
        return len(self.labels[split])

    def targets(self, split: str = "train") -> np.ndarray:
        return self.labels[split]

    def batches(
        self,
        split: str,
        indices: np.ndarray | None,
        batch_size: int,
        *,
        train: bool,
        augment: bool | None = None,
        seed: int = 0,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Normalised ``(x, y, idx)`` batches on the device; ``train`` shuffles with ``seed``
        and, unless ``augment`` is False, augments (random-resized crop, flip) in seeded loader
        workers."""
        augment = train if augment is None else augment and train
        idx = index_tensor(indices, self.size(split), torch.device("cpu")).numpy()
        gen = torch.Generator().manual_seed(seed)
        if train:
            idx = idx[torch.randperm(len(idx), generator=gen).numpy()]
        ds = _Images(self.paths[split], self.labels[split], self._transform(augment))
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            sampler=idx.tolist(),
            num_workers=self.workers,
            generator=gen,
            pin_memory=self.device.type == "cuda",
            collate_fn=_collate,
        )
        for batch, bad in loader:
            self.unreadable.update(self.paths[split][i] for i in bad)
            if batch is None:
                continue
            x, y, i = batch
            dev = self.device
            yield x.to(dev, non_blocking=True), y.to(dev), i.to(dev)

    def _transform(self, train: bool):
        from d2scale.torch_compat import ensure_torchvision

        ensure_torchvision()
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        if train:
            return T.Compose(
                [
                    T.RandomResizedCrop(self.image_size, scale=self.crop_scale),
                    T.RandomHorizontalFlip(),
                ]
                + norm  # fmt: skip
            )
        return T.Compose([T.Resize(self.resize), T.CenterCrop(self.image_size)] + norm)


def _scan(split_dir: str, classes: list[str], progress=None) -> tuple[list[str], np.ndarray]:
    """Sorted image paths of every class directory and their class ids."""
    paths: list[str] = []
    labels: list[int] = []
    step = meter(progress, f"scan {split_dir}", len(classes), "classes")
    for c, name in enumerate(classes):
        step(c)
        d = os.path.join(split_dir, name)
        if not os.path.isdir(d):
            raise D2ScaleError(f"{d} is missing: {split_dir} must have the classes of train/.")
        files = sorted(e.name for e in os.scandir(d) if e.name.lower().endswith(IMAGE_EXTENSIONS))
        paths += [os.path.join(d, f) for f in files]
        labels += [c] * len(files)
    step(len(classes))
    if not paths:
        raise D2ScaleError(f"{split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return paths, np.asarray(labels, dtype=np.int64)
