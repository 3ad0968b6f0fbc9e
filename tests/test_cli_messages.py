"""What the command line says: one-line argparse errors without a doubled prefix (with the
closest flag), help for a bare ``d2scale``, a default for every flag, flags in the groups of
their own command, and counts in the singular where there is one."""

import argparse
import os
import subprocess
import sys

import pytest

from d2scale.cli.main import build_parser, main

TABLE_COMMANDS = ("select", "graph", "mp", "synth", "batch", "bench")


def test_unknown_flag_is_one_line_with_the_closest_flag(capsys):
    assert main(["select", "--fration", "0.3"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "d2scale: error: select: unrecognized arguments: --fration 0.3 (did you mean --fraction?)\n"
    )


def test_a_subcommand_error_names_the_command_once(capsys):
    assert main(["synth", "--out", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("d2scale: error: synth: the following arguments are required: --rows")
    assert err.count("d2scale") == 1


def test_bare_d2scale_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("usage: d2scale") and "select" in out.out and out.err == ""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("command", TABLE_COMMANDS)
def test_every_optional_flag_shows_its_default(command):
    sub = _subparsers(build_parser())[command]
    for action in sub._actions:
        takes_value = action.nargs != 0 and action.option_strings
        if not takes_value or action.required:
            continue
        assert "default" in (action.help or ""), (command, action.option_strings, action.help)


def test_synth_help_has_no_knn_graph_group():
    text = _subparsers(build_parser())["synth"].format_help()
    assert "kNN graph" not in text and "--seed SEED" in text


def test_one_shard_is_said_in_the_singular(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "p"), "--rows", "100"]) == 0
    assert "wrote 100 rows in 1 parquet+npz pair to" in capsys.readouterr().out
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"out: {tmp_path / 'o'}\nbuckets:\n  - {{name: a, metadata_dir: p}}\n")
    assert main(["batch", str(jobs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 1 bucket →" in out and "(100 rows in 1 shard)" in out, out


def test_synth_counts_its_shards(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "p"), "--rows", "300", "--shards", "3"]) == 0
    err = capsys.readouterr().err
    assert "synth: 3/3 shards" in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["methods"],
        ["vision", "quotas", "--counts", "3,5", "--fraction", "1", "--quoter", "uniform"],
    ],
)
def test_a_reader_that_stops_early_ends_it_quietly(argv):
    """``d2scale methods | head -1`` printed ``d2scale: error: BrokenPipeError`` and exited 1;
    it stops as other tools do: no line, the shell's SIGPIPE status."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    code = f"from d2scale.cli.main import main; raise SystemExit(main({argv!r}))"
    proc = subprocess.run([sys.executable, "-c", code], stdout=write, stderr=subprocess.PIPE,
                          text=True, timeout=120)  # fmt: skip
    os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")
