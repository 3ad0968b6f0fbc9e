"""Datasets: CIFAR archives in the real format, digit sets, ImageFolder trees, augmentation."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from d2scale.errors import D2ScaleError
from d2scale.vision.data import augment, load_dataset
from d2scale.vision.splits import chunks, holdout_halves


@pytest.mark.parametrize("tarball", [False, True])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_loads_every_sample(tmp_path, name, tarball, make_cifar):
    root = make_cifar(str(tmp_path), name, per_class=2, test_per_class=2, tarball=tarball)
    d = load_dataset(name, root)
    n_classes = 10 if name == "cifar10" else 100
    n_train = 2 * n_classes if name == "cifar100" else 2 * 10 + 4 * 10
    assert d.size("train") == n_train and d.num_classes == n_classes
    assert d.images["train"].shape == (n_train, 3, 32, 32)
    assert d.images["train"].dtype == torch.uint8
    # the held-out batch is halved per class: val and test are disjoint and cover it
    assert d.size("val") + d.size("test") == 2 * n_classes
    assert np.bincount(d.targets("val"), minlength=n_classes).tolist() == [1] * n_classes


def test_cifar_rows_are_channel_major(tmp_path, make_cifar):
    root = make_cifar(str(tmp_path), per_class=2)
    import pickle

    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_1"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    d = load_dataset("cifar10", root)
    first = d.images["train"][0].numpy()
    assert np.array_equal(first[0].ravel(), raw[b"data"][0][:1024])  # red plane first
    assert int(d.labels["train"][0]) == raw[b"labels"][0]


def test_missing_or_broken_archive_is_one_sentence(tmp_path, make_cifar):
    with pytest.raises(D2ScaleError, match="no CIFAR archive"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(D2ScaleError, match="needs --data-dir"):
        load_dataset("cifar10", None)
    root = make_cifar(str(tmp_path), per_class=2)
    with open(os.path.join(root, "cifar-10-batches-py", "test_batch"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(D2ScaleError, match="cannot read CIFAR member test_batch"):
        load_dataset("cifar10", root)


@pytest.mark.parametrize(
    ("name", "sizes", "shape"),
    [("digits", (1078, 357, 362), (1, 8, 8)), ("mnist5k", (3000, 1000, 1000), (1, 28, 28))],
)
def test_digit_sets_have_fixed_stratified_splits(name, sizes, shape):
    a, b = load_dataset(name), load_dataset(name)
    assert tuple(a.size(s) for s in ("train", "val", "test")) == sizes
    assert tuple(a.images["train"].shape[1:]) == shape
    for s in ("train", "val", "test"):  # fixed split: identical on every load
        assert torch.equal(a.images[s], b.images[s])
    train = np.bincount(a.targets("train"))
    everything = sum(np.bincount(a.targets(s)) for s in ("train", "val", "test"))
    assert np.all(np.abs(train - 0.6 * everything) <= 1)  # stratified


def test_holdout_halves_split_each_class():
    labels = np.array([0] * 5 + [1] * 4 + [2])
    val, test = holdout_halves(labels)
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 2, 0]
    assert sorted(np.concatenate([val, test]).tolist()) == list(range(10))


def test_batches_cover_the_index_in_near_equal_sizes():
    d = load_dataset("digits")
    idx = np.arange(0, 257)
    seen, sizes = [], []
    for x, y, i in d.batches("train", idx, 128, train=True, seed=3):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
        assert torch.equal(y, d.labels["train"][i])
        seen += i.tolist()
        sizes.append(len(i))
    assert sorted(seen) == idx.tolist() and sizes == [86, 86, 85]
    assert [len(c) for c in chunks(torch.arange(129), 128)] == [65, 64]  # never a lone sample
    # evaluation order is the index order, and seeded shuffles repeat
    first = next(iter(d.batches("train", idx, 64, train=False)))[2]
    assert first.tolist() == list(range(len(first)))
    a = next(iter(d.batches("train", idx, 64, train=True, seed=5)))[0]
    b = next(iter(d.batches("train", idx, 64, train=True, seed=5)))[0]
    assert torch.equal(a, b)


def test_augment_translates_within_padding_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    g = torch.Generator().manual_seed(0)
    out = augment(x, pad=1, flip=False, gen=g)
    assert out.shape == x.shape
    for i in range(2):  # every output is the input shifted by at most one pixel
        ok = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ref = torch.nn.functional.pad(x[i], (1, 1, 1, 1))[
                    :, 1 + dy : 5 + dy, 1 + dx : 5 + dx
                ]
                ok |= torch.equal(ref, out[i])
        assert ok
    flipped = augment(x, pad=0, flip=True, gen=torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def test_image_folder_streams_every_file(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in ("ant", "bee"):
            os.makedirs(tmp_path / split / c)
            for i in range(n):
                arr = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / c / f"{i}.png")
    d = load_dataset("imagenet", str(tmp_path), image_size=16, resize=18, workers=1)
    assert (d.size("train"), d.size("val"), d.size("test"), d.num_classes) == (6, 2, 2, 2)
    got = []
    for x, _, i in d.batches("train", None, 4, train=True, seed=0):
        assert x.shape[1:] == (3, 16, 16)
        got += i.tolist()
    assert sorted(got) == list(range(6))
    ((x, y, i),) = d.batches("val", None, 8, train=False)
    assert y.tolist() == [0, 1] and x.shape == (2, 3, 16, 16)
    os.makedirs(tmp_path / "train" / "cat")
    with pytest.raises(D2ScaleError, match="must have the classes of train"):
        load_dataset("imagenet", str(tmp_path))
