"""Shared fixtures of the vision tests: one torch thread, tiny CIFAR-format archives."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def write_cifar(
    root: str,
    name: str = "cifar10",
    per_class: int = 4,
    test_per_class: int = 4,
    tarball: bool = False,
    seed: int = 0,
) -> str:
    """A tiny archive in the real on-disk format: pickled dicts with b"data" (N×3072 uint8,
    channel-major rows) and b"labels" / b"fine_labels"; extracted dir or .tar.gz."""
    rng = np.random.default_rng(seed)
    n_classes = 10 if name == "cifar10" else 100
    key = b"labels" if name == "cifar10" else b"fine_labels"
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"

    def batch(n_per: int) -> dict:
        labels = np.repeat(np.arange(n_classes), n_per)
        rng.shuffle(labels)
        # class-dependent brightness so that a model can learn something
        data = rng.integers(0, 60, size=(len(labels), 3072)) + 18 * (labels[:, None] % 10)
        d = {b"data": data.astype(np.uint8), key: labels.tolist(), b"batch_label": b"x"}
        if name == "cifar100":
            d[b"coarse_labels"] = (labels // 5).tolist()
        return d

    if name == "cifar10":
        members = {
            f"data_batch_{i}": batch(per_class // 2 if i > 1 else per_class) for i in range(1, 6)
        }
        members["test_batch"] = batch(test_per_class)
        members["batches.meta"] = {b"label_names": [b"c%d" % i for i in range(10)]}
    else:
        members = {
            "train": batch(per_class),
            "test": batch(test_per_class),
            "meta": {b"fine_label_names": [b"c%d" % i for i in range(100)]},
        }
    if not tarball:
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for m, d in members.items():
            with open(os.path.join(root, folder, m), "wb") as f:
                pickle.dump(d, f)
        return root
    tar_name = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
    with tarfile.open(os.path.join(root, tar_name), "w:gz") as tar:
        for m, d in members.items():
            raw = pickle.dumps(d)
            info = tarfile.TarInfo(f"{folder}/{m}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return root


@pytest.fixture
def make_cifar():
    """:func:`write_cifar`, for tests that need other archive shapes."""
    return write_cifar


@pytest.fixture
def cifar_dir(tmp_path) -> str:
    return write_cifar(str(tmp_path / "cifar"))
