"""End to end: a CIFAR-format archive → training dynamics → coreset → coreset training;
the experiment grid; resuming; one-line errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from d2scale.cli.main import main
from d2scale.vision.data import load_dataset
from d2scale.vision.dynamics import SCORES
from d2scale.vision.models import build_model
from d2scale.vision.train import recipe_for, train


def _read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def _json(path):
    return json.loads(_read(path))


def _ok(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured


def _fails(argv, capsys, message):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("d2scale: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_cifar_archive_to_dynamics_coreset_and_coreset_training(cifar_dir, tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["--dataset", "cifar10", "--data-dir", cifar_dir, "--model", "cnn", "--quiet"]
    _ok(["vision", "train", *common, "--epochs", "1", "--batch-size", "32", "--out", run], capsys)
    with np.load(os.path.join(run, "dynamics.npz")) as z:
        dyn = {k: z[k] for k in z.files}
    n = 120  # 4 + 2·4 per class over the five batches of the tiny archive
    for key in (*SCORES, "targets", "presentations"):
        assert dyn[key].shape == (n,), key
    assert np.all(dyn["presentations"] == 1)
    assert np.load(os.path.join(run, "features.npy")).shape == (n, 64)
    metrics = _json(os.path.join(run, "metrics.json"))
    assert len(metrics["per_class_accuracy"]) == 10 and metrics["steps"] == 4
    assert os.path.isfile(os.path.join(run, "checkpoint.pt"))

    # the seed's flag spellings select the same coreset as the d2scale names
    ours, seeds = str(tmp_path / "ours.npy"), str(tmp_path / "seed.npy")
    _ok(
        [
            "vision",
            "select",
            "--run",
            run,
            "--method",
            "d2",
            "--fraction",
            "0.3",
            "--score",
            "forgetting",
            "--mis-ratio",
            "0.4",
            "--n-neighbors",
            "5",
            "--gamma",
            "0.1",
            "--coreset-mode",
            "class",
            "--out",
            ours,
            "--quiet",
        ],
        capsys,
    )
    _ok(
        [
            "vision",
            "select",
            "--run",
            run,
            "--sampling-mode",
            "graph",
            "--coreset-ratio",
            "0.3",
            "--coreset-key",
            "forgetting",
            "--mis-ratio",
            "0.4",
            "--label-balanced",
            "--budget-mode",
            "uniform",
            "--n-neighbor",
            "5",
            "--gamma",
            "0.1",
            "--stratas",
            "25",
            "--graph-mode",
            "sum",
            "--graph-sampling-mode",
            "weighted",
            "--out",
            seeds,
            "--quiet",
        ],
        capsys,
    )
    core = np.load(ours)
    assert np.array_equal(core, np.load(seeds)) and len(core) == 36
    info = _json(ours + ".json")
    assert sum(info["class_budgets"]) == 36 and info["n_removed_by_aum"] == 48

    coreset_run = str(tmp_path / "coreset-run")
    _ok(
        [
            "vision",
            "train",
            *common,
            "--coreset",
            ours,
            "--iterations",
            "3",
            "--batch-size",
            "16",
            "--out",
            coreset_run,
        ],
        capsys,
    )
    m = _json(os.path.join(coreset_run, "metrics.json"))
    assert (m["n_train"], m["steps"]) == (36, 3)
    assert not os.path.exists(os.path.join(coreset_run, "dynamics.npz"))


def test_experiment_grid_writes_results_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "grid")
    argv = [
        "vision",
        "experiment",
        "--dataset",
        "digits",
        "--methods",
        "random,topk-el2n,d2",
        "--fractions",
        "0.3",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--iterations",
        "2",
        "--out",
        out,
        "--quiet",
    ]
    _ok(argv, capsys)
    records = _json(os.path.join(out, "results.json"))["records"]
    assert [r["method"] for r in records] == ["full", "random", "topk-el2n", "d2"]
    for r in records[1:]:
        assert r["n_selected"] == 323 and r["fraction"] == 0.3 and r["seed"] == 0
        assert 0 <= r["worst_class_accuracy"] <= r["test_accuracy"] <= 1
        assert len(r["per_class_accuracy"]) == 10 and r["seconds"] > 0
    md = _read(os.path.join(out, "results.md"))
    assert "| topk-el2n |" in md and "0.3 kept" in md
    assert _read(os.path.join(out, "accuracy.png"), "rb")[:4] == b"\x89PNG"
    mtime = os.path.getmtime(os.path.join(out, "seed-0", "d2-0.3", "metrics.json"))
    _ok(argv, capsys)  # every cell finished: nothing is retrained
    assert os.path.getmtime(os.path.join(out, "seed-0", "d2-0.3", "metrics.json")) == mtime
    # other settings would mix new cells with the finished ones: refused, nothing written
    for flag, value, message in [("--epochs", "2", "with epochs 1, not 2"),
                                 ("--gamma", "0.5", "with gamma 0.1, not 0.5")]:  # fmt: skip
        _fails([*argv, flag, value, "--seeds", "1"], capsys, message)
    assert not os.path.exists(os.path.join(out, "seed-1"))
    _ok([*argv, "--seeds", "1", "--methods", "random"], capsys)  # more cells: the grid grows


def test_interrupted_training_resumes_to_the_same_model(tmp_path, monkeypatch):
    data = load_dataset("digits")
    recipe = recipe_for("digits", "cnn", epochs=3, iterations=None)
    ref = train(data, "cnn", recipe, seed=1, dynamics=True, progress=False)

    import d2scale.vision.train as t

    real = t.train_epoch

    def crash_in_epoch_2(run, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(run, epoch)

    monkeypatch.setattr(t, "train_epoch", crash_in_epoch_2)
    monkeypatch.setattr(t, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every epoch
    out = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(data, "cnn", recipe, seed=1, dynamics=True, out=out, progress=False)
    monkeypatch.setattr(t, "train_epoch", real)
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["epoch"] == 1
    resumed = train(data, "cnn", recipe, seed=1, dynamics=True, out=out, progress=False)
    for a, b in zip(
        ref.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    for key in SCORES:
        np.testing.assert_array_equal(ref.scores[key], resumed.scores[key])
    other = recipe_for("digits", "cnn", epochs=4)
    from d2scale.errors import D2ScaleError

    with pytest.raises(D2ScaleError, match="belongs to a run with other data or settings"):
        train(data, "cnn", other, seed=1, out=out, progress=False)


def test_cdbw_weights_follow_validation_recall(monkeypatch):
    data = load_dataset("digits")
    import d2scale.vision.train as t

    seen = []
    real = t.train_epoch

    def spy(run, epoch):
        recalls = [h["val_recall"] for h in run.history]
        seen.append((run.class_weights.clone(), recalls))
        return real(run, epoch)

    monkeypatch.setattr(t, "train_epoch", spy)
    train(data, "cnn", recipe_for("digits", "cnn", epochs=3), cdbw=True, progress=False)
    assert torch.equal(seen[0][0], torch.ones(10))  # epoch 0: all ones
    for epoch in (1, 2):  # then 1 − recall of the previous epoch on the validation half
        weights, recalls = seen[epoch]
        want = 1 - torch.tensor(recalls[epoch - 1], dtype=torch.float32)
        assert torch.allclose(weights, want)
    seen.clear()
    train(
        data,
        "cnn",
        recipe_for("digits", "cnn", epochs=2),
        cdbw=True,
        recall_smoothing="laplace",
        progress=False,
    )
    n = torch.tensor(np.bincount(data.targets("val")), dtype=torch.float32)
    r = torch.tensor(seen[1][1][0], dtype=torch.float32)
    assert torch.allclose(seen[1][0], 1 - (r * n + 1) / (n + 2))  # never exactly 0


@pytest.mark.parametrize(
    ("name", "dim"), [("resnet18", 512), ("resnet50", 2048), ("vgg16_bn", 512), ("cnn", 64)]
)
def test_models_give_logits_and_penultimate_features(name, dim):
    torch.manual_seed(0)
    m = build_model(name, 10, 3, 32).eval()
    with torch.no_grad():
        logits, h = m(torch.randn(2, 3, 32, 32), features=True)
    assert logits.shape == (2, 10) and h.shape == (2, dim)
    if name == "resnet18":  # the CIFAR stem: 3×3 stride-1 convolution, no max-pool
        assert m.body.conv1.kernel_size == (3, 3) and m.body.conv1.stride == (1, 1)
        assert isinstance(m.body.maxpool, torch.nn.Identity)


def test_one_line_errors(tmp_path, capsys):
    _fails(
        [
            "vision",
            "select",
            "--run",
            str(tmp_path),
            "--method",
            "d2",
            "--fraction",
            "0.3",
            "--out",
            str(tmp_path / "c.npy"),
        ],
        capsys,
        "is missing: --run must be a full-data run",
    )
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([0, 0, 1]))
    _fails(
        [
            "vision",
            "train",
            "--dataset",
            "digits",
            "--coreset",
            str(bad),
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
        "repeats sample ids",
    )
    np.save(bad, np.array([5000]))
    _fails(
        [
            "vision",
            "train",
            "--dataset",
            "digits",
            "--coreset",
            str(bad),
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
        "must hold sample ids in [0, 1078)",
    )
    _fails(
        [
            "vision",
            "experiment",
            "--dataset",
            "digits",
            "--methods",
            "herding",
            "--out",
            str(tmp_path / "g"),
        ],
        capsys,
        "unknown method 'herding'",
    )
    if not torch.cuda.is_available():
        _fails(
            [
                "vision",
                "train",
                "--dataset",
                "digits",
                "--device",
                "cuda",
                "--out",
                str(tmp_path / "r"),
            ],
            capsys,
            "needs a CUDA GPU",
        )


def test_a_selection_flag_no_grid_method_reads_is_a_recorded_warning(tmp_path, capsys):
    """``experiment --methods random --gamma 0.5``: D2's gamma changed nothing (it was
    ignored silently); a grid with d2 reads it."""
    out = tmp_path / "grid"
    argv = ["vision", "experiment", "--dataset", "digits", "--methods", "random",
            "--fractions", "0.3", "--seeds", "0", "--epochs", "1", "--iterations", "2",
            "--gamma", "0.5", "--out", str(out), "--quiet"]  # fmt: skip
    err = _ok(argv, capsys).err
    warning = "warning: --gamma 0.5 changes nothing: no method of --methods reads it"
    assert _json(out / "results.json")["ignored_flags"] == [warning]
    assert f"d2scale: {warning}\n" in err
