"""Bad inputs to the vision commands: one line, exit 1, never a traceback or a silently
wrong result (NaN scores or features, negative labels, damaged runs and archives)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from d2scale.cli.main import main
from d2scale.vision.dynamics import SCORES


def _fails(argv, capsys, message):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("d2scale: error: ") and err.count("\n") == 1, err
    assert message in err, err


def _run(tmp_path, n=40, classes=4, **changes) -> str:
    """A full-data run directory (dynamics.npz, features.npy) with ``changes`` applied."""
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    scores = {k: rng.random(n).astype(np.float32) for k in SCORES}
    scores["targets"] = np.arange(n) % classes
    features = rng.random((n, 3)).astype(np.float32)
    features = changes.pop("features", features)
    scores.update(changes)
    np.savez(run / "dynamics.npz", **scores)
    np.save(run / "features.npy", features)
    return str(run)


def _select(run, method, tmp_path, *extra):
    out = str(tmp_path / "c.npy")
    argv = ["vision", "select", "--run", run, "--method", method, "--fraction", "0.5"]
    return [*argv, *extra, "--out", out, "--quiet"]


def test_nan_scores_are_refused_not_ranked_last(tmp_path, capsys):
    el2n = np.linspace(0, 1, 40).astype(np.float32)
    el2n[[3, 7]] = np.nan
    run = _run(tmp_path, el2n=el2n)
    _fails(_select(run, "topk", tmp_path, "--score", "el2n"), capsys, "'el2n' has 2 NaN")
    assert not os.path.exists(tmp_path / "c.npy")


def test_nan_features_are_refused_for_feature_methods(tmp_path, capsys):
    features = np.random.default_rng(1).random((40, 3)).astype(np.float32)
    features[5, 1] = np.nan
    run = _run(tmp_path, features=features)
    for method in ("d2", "moderate", "kcenter"):
        _fails(_select(run, method, tmp_path), capsys, "1 feature rows hold NaN")
    assert main(_select(run, "random", tmp_path)) == 0  # random reads no features


def test_negative_labels_are_refused(tmp_path, capsys):
    targets = np.arange(40) % 4
    targets[0] = -1
    run = _run(tmp_path, targets=targets)
    _fails(_select(run, "random", tmp_path), capsys, "class labels must be ≥ 0; found -1")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_dynamics_is_one_line(tmp_path, capsys, damage):
    run = _run(tmp_path)
    path = os.path.join(run, "dynamics.npz")
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2] if damage == "truncated" else b"<html>not it</html>")
    _fails(_select(run, "topk", tmp_path), capsys, "cannot read the run in")


def test_mis_sized_dynamics_is_one_line(tmp_path, capsys):
    run = _run(tmp_path, el2n=np.zeros(39, np.float32))
    _fails(_select(run, "topk", tmp_path), capsys, "'el2n' has shape (39,)")


@pytest.mark.parametrize("content", ["truncated", "random", "html"])
def test_damaged_cifar_tarball_is_one_line(tmp_path, capsys, make_cifar, content):
    root = make_cifar(str(tmp_path), per_class=2, tarball=True)
    path = os.path.join(root, "cifar-10-python.tar.gz")
    with open(path, "rb") as f:
        raw = f.read()
    data = {
        "truncated": raw[: len(raw) * 2 // 3],
        "random": np.random.default_rng(0).bytes(5000),
        "html": b"<!DOCTYPE html><html><body>Moved</body></html>",
    }[content]
    with open(path, "wb") as f:
        f.write(data)
    argv = ["vision", "train", "--dataset", "cifar10", "--data-dir", root, "--model", "cnn"]
    _fails([*argv, "--out", str(tmp_path / "r")], capsys, "cannot read")


def test_cifar_labels_outside_the_classes_are_one_line(tmp_path, capsys, make_cifar):
    import pickle

    root = make_cifar(str(tmp_path), per_class=2)
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_2")
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"labels"][0] = 10
    with open(path, "wb") as f:
        pickle.dump(d, f)
    argv = ["vision", "train", "--dataset", "cifar10", "--data-dir", root, "--model", "cnn"]
    _fails([*argv, "--out", str(tmp_path / "r")], capsys, "labels outside the 10 classes")


def test_a_fraction_that_keeps_nothing_is_refused(tmp_path, capsys):
    argv = ["vision", "select", "--run", _run(tmp_path), "--method", "random"]
    _fails(
        [*argv, "--fraction", "0.01", "--out", str(tmp_path / "c.npy")], capsys, "keeps no sample"
    )


def test_a_final_frac_that_keeps_nothing_is_refused_before_training(tmp_path, capsys):
    """``prune --final-frac 0.0001`` of 1,078 samples trained a query model, then failed in
    the final recipe with a ZeroDivisionError traceback."""
    out = tmp_path / "p"
    argv = ["vision", "prune", "--dataset", "digits", "--epochs", "1", "--out", str(out)]
    _fails([*argv, "--final-frac", "0.0001", "--quiet"], capsys, "keeps no sample of 1,078")
    assert not out.exists()


@pytest.mark.parametrize("out", ["features.npy", "metrics", "./dynamics.npz"])
def test_a_coreset_out_over_a_file_of_the_run_is_refused(tmp_path, capsys, out):
    """``--out RUN/features.npy`` (or RUN/metrics, whose record is RUN/metrics.json) would
    replace the run it selects from."""
    run = _run(tmp_path)
    (tmp_path / "run" / "metrics.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    argv = ["vision", "select", "--run", run, "--method", "random", "--fraction", "0.5",
            "--out", os.path.join(run, out), "--quiet"]  # fmt: skip
    _fails(argv, capsys, "a file of the run in")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_a_flag_the_method_does_not_read_is_a_recorded_warning(tmp_path, capsys):
    """``--method random --gamma 0.5 --score el2n`` keeps what ``--method random`` keeps,
    and says (and records) that the two flags changed nothing."""
    run = _run(tmp_path)
    assert main(_select(run, "random", tmp_path, "--gamma", "0.5", "--score", "el2n")) == 0
    err = capsys.readouterr().err
    plain = np.load(tmp_path / "c.npy")
    record = json.loads((tmp_path / "c.npy.json").read_text())
    assert record["warnings"] == [
        "warning: --score el2n changes nothing: --method random does not read it",
        "warning: --gamma 0.5 changes nothing: --method random does not read it",
    ]
    assert all(w in err for w in record["warnings"])
    assert main(_select(run, "random", tmp_path)) == 0
    assert np.array_equal(np.load(tmp_path / "c.npy"), plain)
    assert "warnings" not in json.loads((tmp_path / "c.npy.json").read_text())


def test_a_selection_flag_the_prune_scorer_does_not_read_is_a_recorded_warning(tmp_path, capsys):
    """``prune --scorer random --gamma 0.5``: the gamma of D2 changed nothing (it was
    ignored silently)."""
    out = tmp_path / "p"
    argv = ["vision", "prune", "--dataset", "digits", "--final-frac", "0.5", "--quoter", "none",
            "--gamma", "0.5", "--epochs", "1", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    warning = "warning: --gamma 0.5 changes nothing: --scorer random does not read it"
    assert json.loads((out / "metrics.json").read_text())["ignored_flags"] == [warning]
    assert f"d2scale: {warning}\n" in err
