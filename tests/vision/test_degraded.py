"""A degraded but valid result (a class emptied by quotas, a coreset without a class) prints
one warning line and is recorded; the DRoP defaults; every vision --help shows defaults."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest

from d2scale.cli.main import build_parser, main
from d2scale.cli.vision import _protocol_flags
from d2scale.vision import prune
from d2scale.vision.defaults import DEFAULT_QUOTER, DEFAULT_RECALL_SMOOTHING

SUBCOMMANDS = ("train", "select", "experiment", "quotas", "prune")


def _json(path):
    with open(path) as f:
        return json.load(f)


def _warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning:" in line]


def test_quotas_that_empty_a_class_warn_once_and_say_so_in_the_json(capsys):
    argv = ["vision", "quotas", "--counts", "50,30,20", "--recalls", "1,0.5,1"]
    assert main([*argv, "--fraction", "0.2"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["quotas"] == [0, 20, 0]
    assert len(report["warnings"]) == 1 and "class(es) [0, 2]" in report["warnings"][0]
    assert _warning_lines(err) == err.splitlines() and len(err.splitlines()) == 1
    assert main([*argv, "--fraction", "0.9"]) == 0  # every class keeps some: no warning
    out, err = capsys.readouterr()
    assert "warnings" not in json.loads(out) and err == ""


def test_quotas_with_a_huge_count_is_one_line(capsys):
    argv = ["vision", "quotas", "--counts", "4000000000000000000,5", "--fraction", "0.5"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("d2scale: error: --counts must sum to at most 2^53") and err.count("\n") == 1
    )


def _perfect_class_0(monkeypatch):
    """Query models whose validation recall is 1.0 on class 0: DRoP gives it no samples."""
    real = prune._query

    def query(data, model, recipe, params, kept, t, cache, bars):
        q = real(data, model, recipe, params, kept, t, cache, bars)
        q.recall = np.array([1.0] + [0.5] * 9)
        return q

    monkeypatch.setattr(prune, "_query", query)


def test_prune_that_empties_a_class_warns_even_when_quiet_and_records_it(
    tmp_path, capsys, monkeypatch
):
    _perfect_class_0(monkeypatch)
    out = str(tmp_path / "p")
    argv = ["vision", "prune", "--dataset", "digits", "--final-frac", "0.3"]
    argv += ["--recall-smoothing", "none", "--epochs", "1", "--out", out, "--quiet"]
    assert main(argv) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "warning: the quotas keep no samples of class(es) [0]" in lines[0]
    m = _json(os.path.join(out, "metrics.json"))
    assert m["kept_per_class"][0] == 0 and m["warnings"] == [lines[0].removeprefix("d2scale: ")]


def test_drop_grid_reports_and_records_degraded_cells(tmp_path, capsys, monkeypatch):
    _perfect_class_0(monkeypatch)
    out = str(tmp_path / "g")
    argv = ["vision", "experiment", "--protocol", "drop", "--dataset", "digits"]
    argv += ["--methods", "random+drop", "--recall-smoothing", "none", "--fractions", "0.3"]
    argv += ["--seeds", "0", "--epochs", "1", "--out", out]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert len(_warning_lines(err)) == 1 and "class(es) [0]" in _warning_lines(err)[0]
    record = _json(os.path.join(out, "results.json"))["records"][1]
    assert record["method"] == "random+drop" and len(record["warnings"]) == 1
    with open(os.path.join(out, "results.md")) as f:
        assert "**Warnings**" in f.read()
    assert main(argv) == 0  # a rerun skips the finished cell and still says it
    assert len(_warning_lines(capsys.readouterr().err)) == 1


def test_select_that_leaves_a_class_out_warns_and_records(tmp_path, capsys):
    run = _fake_run(tmp_path, n=40, classes=4)
    scores = dict(np.load(os.path.join(run, "dynamics.npz")))
    scores["el2n"] = np.where(scores["targets"] == 3, 0.0, 1.0 + np.arange(40)).astype(np.float32)
    np.savez(os.path.join(run, "dynamics.npz"), **scores)
    out = str(tmp_path / "c.npy")
    argv = ["vision", "select", "--run", run, "--method", "topk", "--score", "el2n"]
    assert main([*argv, "--fraction", "0.25", "--out", out, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert len(_warning_lines(err)) == 1 and "no samples of class(es) [3]" in err
    assert len(_json(out + ".json")["warnings"]) == 1


def _fake_run(tmp_path, n: int = 40, classes: int = 4, dim: int = 3) -> str:
    """A full-data run directory as `vision train` writes it (dynamics.npz, features.npy)."""
    from d2scale.vision.dynamics import SCORES

    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    scores = {k: rng.random(n).astype(np.float32) for k in SCORES}
    scores["targets"] = np.arange(n) % classes
    np.savez(run / "dynamics.npz", **scores)
    np.save(run / "features.npy", rng.random((n, dim)).astype(np.float32))
    return str(run)


def test_prune_defaults_are_drop_quotas_with_laplace_recall():
    args = build_parser().parse_args(
        ["vision", "prune", "--dataset", "digits", "--final-frac", "0.3", "--out", "P"]
    )
    assert (args.quoter, args.recall_smoothing) == ("drop", "laplace")
    assert (DEFAULT_QUOTER, DEFAULT_RECALL_SMOOTHING) == ("drop", "laplace")
    p = prune.PruneParams("dp", 0.3)
    assert (p.quoter, p.recall_smoothing) == (DEFAULT_QUOTER, DEFAULT_RECALL_SMOOTHING)
    grid = build_parser().parse_args(
        ["vision", "experiment", "--dataset", "digits", "--protocol", "drop", "--out", "G"]
    )
    _protocol_flags(grid, drop=True)  # the drop grid's defaults are prune's
    assert grid.recall_smoothing == DEFAULT_RECALL_SMOOTHING


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_vision_help_shows_the_defaults(command):
    sub = _subparsers(_subparsers(build_parser())["vision"])[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        default = action.default
        if not action.option_strings or default is None or default is False:
            continue
        if default == argparse.SUPPRESS:
            continue
        text = formatter._get_help_string(action) % {"default": default}
        assert "default" in text, (command, action.option_strings, text)
    text = " ".join(sub.format_help().split())
    if command == "prune":
        assert "(default: drop)" in text and "(default: laplace)" in text
    if command in ("train", "experiment", "prune"):
        assert "(default: 1)" in text  # --threads


def test_select_help_shows_method_as_required():
    usage = _subparsers(_subparsers(build_parser())["vision"])["select"].format_usage()
    assert "(--method" in usage and "[--method" not in usage
