"""Long vision steps report progress in user units (batches, rows) as plain lines, bars and
``--log-json`` events; the thread count is a documented default and recorded."""

from __future__ import annotations

import json
import os

import pytest

from d2scale.cli.main import main
from d2scale.vision import meter


def _events(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_train_reports_batches_as_events_and_plain_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(meter, "REPORT_EVERY_S", 0.0)  # every batch, not every 2 s
    log, out = str(tmp_path / "log.jsonl"), str(tmp_path / "run")
    argv = ["vision", "train", "--dataset", "digits", "--epochs", "2", "--log-json", log]
    assert main([*argv, "--out", out]) == 0
    steps = [e for e in _events(log) if e["event"] == "progress" and e["label"] == "train"]
    done = [e["done"] for e in steps]
    assert done == sorted(done) and done[-1] == steps[-1]["total"] == 34  # 2 × 17 batches
    assert {e["unit"] for e in steps} == {"batches"}
    err = capsys.readouterr().err  # not a terminal: plain lines
    assert "train: 34/34 batches" in err
    m = _metrics(out)
    assert m["threads"] == 1  # the documented default, recorded


def test_meter_is_silent_for_short_steps_and_throttled():
    said = []
    m = meter.Meter(said.append, "x", 10, "rows", every=3600)
    for i in range(1, 11):
        m(i)
    assert said == []  # under the interval: nothing, not even the end
    m = meter.Meter(said.append, "x", 10, "rows", every=0)
    for i in range(1, 11):
        m(i)
    assert said[-1] == "x: 10/10 rows" and len(said) == 10


def _max_gap(events: list[dict]) -> float:
    times = [e["elapsed_s"] for e in events]
    return max(b - a for a, b in zip(times, times[1:], strict=False))


@pytest.mark.slow
def test_full_digits_train_and_readme_prune_never_go_quiet_for_15s(tmp_path, capsys):
    log = str(tmp_path / "train.jsonl")
    argv = ["vision", "train", "--dataset", "digits", "--log-json", log, "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "t")]) == 0
    assert _max_gap(_events(log)) <= 15
    # the README's DRoP example as written: a sensible model, progress throughout
    log, out = str(tmp_path / "prune.jsonl"), str(tmp_path / "p")
    argv = ["vision", "prune", "--dataset", "digits", "--strategy", "dp", "--quoter", "drop"]
    argv += ["--scorer", "random", "--num-inits", "2", "--final-frac", "0.3"]
    assert main([*argv, "--out", out, "--log-json", log, "--quiet"]) == 0
    assert _max_gap(_events(log)) <= 15
    m = _metrics(out)
    assert m["test_accuracy"] > 0.9 and m["worst_class_accuracy"] > 0.7, m["per_class_accuracy"]


def _metrics(run: str) -> dict:
    with open(os.path.join(run, "metrics.json")) as f:
        return json.load(f)


def test_select_reports_classes_and_centres(tmp_path, monkeypatch):
    import numpy as np

    from d2scale.vision.dynamics import SCORES

    monkeypatch.setattr(meter, "REPORT_EVERY_S", 0.0)
    rng = np.random.default_rng(0)
    scores = {k: rng.random(60).astype(np.float32) for k in SCORES}
    np.savez(tmp_path / "dynamics.npz", targets=np.arange(60) % 3, **scores)
    np.save(tmp_path / "features.npy", rng.random((60, 4)).astype(np.float32))
    log = str(tmp_path / "log.jsonl")
    argv = ["vision", "select", "--run", str(tmp_path), "--fraction", "0.5", "--quiet"]
    for mode, label, total in (("global", "k-center", 30), ("class", "kcenter per class", 3)):
        out = str(tmp_path / f"{mode}.npy")
        argv_m = [*argv, "--method", "kcenter", "--coreset-mode", mode, "--log-json", log]
        assert main([*argv_m, "--out", out]) == 0
        steps = [e for e in _events(log) if e.get("label") == label]
        assert steps and steps[-1]["done"] == steps[-1]["total"] == total
