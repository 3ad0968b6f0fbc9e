"""TinyImageNet and Waterbirds from tiny fixtures in their real on-disk layouts, ResNet-34 and
VGG-19-BN, worst-group accuracy, and unreadable images (skipped, counted, warned)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from d2scale.cli.main import main
from d2scale.errors import D2ScaleError
from d2scale.vision.data import load_dataset
from d2scale.vision.models import build_model
from d2scale.vision.train import evaluate

Image = pytest.importorskip("PIL.Image")


def _image(path: str, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    pixels = np.clip(rng.integers(0, 40, shape) + value, 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode).save(path, quality=95)


def write_tinyimagenet(root: str, wnids=("n02", "n01", "n03"), per_class=4, val_per_class=4):
    """``tiny-imagenet-200/`` as distributed: wnids.txt, words.txt, train/<wnid>/images/,
    train/<wnid>/<wnid>_boxes.txt, val/images/ + val/val_annotations.txt, test/images/."""
    base = os.path.join(root, "tiny-imagenet-200")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    with open(os.path.join(base, "words.txt"), "w") as f:
        f.writelines(f"{w}\tthing {w}\n" for w in wnids)
    for c, w in enumerate(sorted(wnids)):
        for i in range(per_class):
            mode = "L" if i == 0 else "RGB"  # the real set has some grayscale JPEGs
            _image(f"{base}/train/{w}/images/{w}_{i}.JPEG", (64, 64), 60 * c, mode)
        with open(f"{base}/train/{w}/{w}_boxes.txt", "w") as f:
            f.writelines(f"{w}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(per_class))
    lines = []
    for j in range(val_per_class * len(wnids)):
        w = wnids[j % len(wnids)]
        _image(f"{base}/val/images/val_{j}.JPEG", (64, 64), 60 * sorted(wnids).index(w))
        lines.append(f"val_{j}.JPEG\t{w}\t1\t2\t60\t61\n")
    with open(f"{base}/val/val_annotations.txt", "w") as f:
        f.writelines(lines)
    _image(f"{base}/test/images/test_0.JPEG", (64, 64), 0)
    return root


GROUPS = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (y, place)


def write_waterbirds(root: str, per_group=(3, 2, 2, 3)) -> str:
    """``waterbird_complete95_forest2water2/`` with metadata.csv (img_id, img_filename, y,
    split, place, place_filename) and images of varied sizes in species folders; every
    split has every group, ``per_group`` images each in train."""
    base = os.path.join(root, "waterbird_complete95_forest2water2")
    rows, img_id = [], 0
    for split, counts in ((0, per_group), (1, (2, 2, 2, 2)), (2, (2, 2, 2, 2))):
        for (y, place), count in zip(GROUPS, counts, strict=True):
            for _ in range(count):
                img_id += 1
                species = "001.Black_footed_Albatross" if y else "011.Rusty_Blackbird"
                name = f"{species}/{species.split('.')[1]}_{img_id:04d}_{split}.jpg"
                _image(os.path.join(base, name), (40 + img_id % 7, 32 + img_id % 5), 90 * y)
                place_file = f"{'ocean' if place else 'forest'}/{img_id:05d}.jpg"
                rows.append([img_id, name, y, split, place, place_file])
    with open(os.path.join(base, "metadata.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        w.writerows(rows)
    return root


# ---------------------------------------------------------------------------- models


@pytest.mark.parametrize(("name", "dim"), [("resnet34", 512), ("vgg19_bn", 512)])
def test_resnet34_and_vgg19_give_logits_and_features(name, dim):
    torch.manual_seed(0)
    m = build_model(name, 100, 3, 32).eval()
    with torch.no_grad():
        logits, h = m(torch.randn(2, 3, 32, 32), features=True)
    assert logits.shape == (2, 100) and h.shape == (2, dim)
    if name == "resnet34":  # torchvision's ResNet-34 (3-4-6-3 blocks) with the CIFAR stem
        assert [len(getattr(m.body, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
        assert m.body.conv1.kernel_size == (3, 3)
    else:  # 16 convolutions, then pooled features into one linear layer
        convs = [x for x in m.body.modules() if isinstance(x, torch.nn.Conv2d)]
        assert len(convs) == 16 and isinstance(m.fc, torch.nn.Linear)


# ---------------------------------------------------------------------------- TinyImageNet


def test_tinyimagenet_reads_train_folders_and_val_annotations(tmp_path):
    root = write_tinyimagenet(str(tmp_path))
    d = load_dataset("tinyimagenet", root)
    assert d.num_classes == 3 and d.image_size == 64 and d.in_channels == 3
    assert d.size("train") == 12 and d.size("val") + d.size("test") == 12
    assert d.images["train"].dtype == torch.uint8
    # classes are the sorted wnids (n01, n02, n03); the fixture brightens class c by 60·c
    means = [float(d.images["train"][d.labels["train"] == c].float().mean()) for c in range(3)]
    assert means == sorted(means)
    val_labels = np.concatenate([d.targets("val"), d.targets("test")])
    assert np.bincount(val_labels).tolist() == [4, 4, 4]  # from val_annotations.txt
    assert load_dataset("tinyimagenet", os.path.join(root, "tiny-imagenet-200")).size("train") == 12


def test_tinyimagenet_errors_and_unreadable_images(tmp_path):
    with pytest.raises(D2ScaleError, match="no TinyImageNet"):
        load_dataset("tinyimagenet", str(tmp_path))
    root = write_tinyimagenet(str(tmp_path))
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    good = ann.read_text()
    ann.write_text(good + "val_99.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(D2ScaleError, match="line 13: expected"):
        load_dataset("tinyimagenet", root)
    ann.write_text(good)
    (tmp_path / "tiny-imagenet-200" / "train" / "n01" / "images" / "n01_1.JPEG").write_bytes(b"x")
    d = load_dataset("tinyimagenet", root)
    assert d.size("train") == 11 and len(d.unreadable) == 1


def test_tinyimagenet_trains_from_the_command_line(tmp_path, capsys):
    root = write_tinyimagenet(str(tmp_path))
    out = str(tmp_path / "run")
    argv = ["vision", "train", "--dataset", "tinyimagenet", "--data-dir", root]
    assert main([*argv, "--model", "cnn", "--epochs", "1", "--out", out, "--quiet"]) == 0
    m = _metrics(out)
    assert m["dataset"] == "tinyimagenet" and len(m["per_class_accuracy"]) == 3
    assert np.load(os.path.join(out, "features.npy")).shape == (12, 64)


# ---------------------------------------------------------------------------- Waterbirds


def test_waterbirds_splits_and_groups_from_metadata(tmp_path):
    root = write_waterbirds(str(tmp_path))
    d = load_dataset("waterbirds", root, image_size=16, resize=18, workers=1)
    assert d.name == "waterbirds" and d.num_classes == 2
    assert (d.size("train"), d.size("val"), d.size("test")) == (10, 8, 8)
    assert np.bincount(d.groups["train"]).tolist() == [3, 2, 2, 3]
    assert np.array_equal(d.groups["train"] // 2, d.targets("train"))  # group = 2·y + place
    x, y, idx = next(d.batches("test", None, 8, train=False))
    assert x.shape == (8, 3, 16, 16) and sorted(idx.tolist()) == list(range(8))


def test_waterbirds_reports_worst_group_accuracy(tmp_path):
    root = write_waterbirds(str(tmp_path))
    d = load_dataset("waterbirds", root, image_size=16, resize=18, workers=1)

    class Landbirds(torch.nn.Module):  # always predicts class 0 (landbird)
        def forward(self, x, features=False):
            logits = torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)
            return (logits, x.flatten(1)) if features else logits

    r = evaluate(Landbirds(), d, "test")
    assert r["group_names"][0] == "landbird/land" and r["per_group_count"] == [2, 2, 2, 2]
    assert r["per_group_accuracy"] == [1.0, 1.0, 0.0, 0.0] and r["worst_group_accuracy"] == 0.0
    assert r["accuracy"] == 0.5


def test_waterbirds_metadata_errors_are_one_sentence(tmp_path):
    with pytest.raises(D2ScaleError, match="no Waterbirds"):
        load_dataset("waterbirds", str(tmp_path))
    root = write_waterbirds(str(tmp_path))
    meta = tmp_path / "waterbird_complete95_forest2water2" / "metadata.csv"
    meta.write_text(meta.read_text().replace(",0,1,", ",0,7,", 1))
    with pytest.raises(D2ScaleError, match="split 0, 1 or 2"):
        load_dataset("waterbirds", root)
    meta.write_text("img_id,img_filename,y\n1,a.jpg,0\n")
    with pytest.raises(D2ScaleError, match="lacks the column"):
        load_dataset("waterbirds", root)


def test_waterbirds_train_records_worst_group_and_skips_unreadable(tmp_path, capsys):
    root = write_waterbirds(str(tmp_path))
    base = tmp_path / "waterbird_complete95_forest2water2"
    bad = sorted((base / "011.Rusty_Blackbird").iterdir())[0]
    bad.write_bytes(b"<html>not an image</html>")
    out = str(tmp_path / "run")
    argv = ["vision", "train", "--dataset", "waterbirds", "--data-dir", root, "--model", "cnn"]
    assert main([*argv, "--epochs", "1", "--batch-size", "4", "--out", out, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: skipped 1 unreadable image(s)" in err, err
    m = _metrics(out)
    assert 0 <= m["worst_group_accuracy"] <= m["test_accuracy"] and len(m["group_names"]) == 4
    assert m["unreadable_images"]["count"] == 1 and str(bad) in m["unreadable_images"]["first"]
    features = np.load(os.path.join(out, "features.npy"))
    assert features.shape[0] == 10 and np.isnan(features).any(axis=1).sum() <= 1


def test_image_folder_with_an_unreadable_image_trains_and_warns(tmp_path, capsys):
    for split in ("train", "val"):
        for c in ("a", "b"):
            for i in range(3):
                _image(str(tmp_path / split / c / f"{i}.png"), (20, 20), 100 * (c == "b"))
    (tmp_path / "train" / "a" / "1.png").write_bytes(b"\x89PNG truncated")
    out = str(tmp_path / "run")
    argv = ["vision", "train", "--dataset", "imagenet", "--data-dir", str(tmp_path)]
    assert main([*argv, "--model", "cnn", "--epochs", "1", "--out", out, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 1 unreadable image(s)" in err, err
    assert _metrics(out)["unreadable_images"]["count"] == 1


def _metrics(run: str) -> dict:
    with open(os.path.join(run, "metrics.json")) as f:
        return json.load(f)
