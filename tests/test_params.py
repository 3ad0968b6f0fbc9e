"""The parameter table drives the CLI: every invalid value of every option of every command
gives one line on stderr and exit status 1 (the invalid values are generated from the table)."""

import dataclasses

import numpy as np
import pytest

from d2scale.cli.main import main
from d2scale.errors import D2ScaleError
from d2scale.params import PARAMS, Param, SelectParams, check, parse_bytes


def invalid_texts(p: Param) -> list[str]:
    """Command-line values that violate ``p``'s constraints."""
    if p.kind == "choice":
        return ["bogus", ""]
    if p.kind == "choices":
        return ["bogus", "", f"{p.choices[0]},bogus"]
    if p.kind == "int":
        values = ["x", "1.5", ""]
        if p.low is not None:
            values.append(str(int(p.low) - 1))
        if p.high is not None:
            values.append(str(int(p.high) + 1))
        return values
    if p.kind == "float":
        values = ["x", "nan", "inf", ""]
        if p.low is not None:
            values.append(str(p.low - 1 if not p.low_open else p.low))
        if p.high is not None:
            values.append(str(p.high + 0.5))
        return values
    if p.kind == "bytes":
        return ["8", "8 parsecs", "1KB", "x"]
    if p.kind == "fractions":
        return ["0", "1.5", "x", "-0.1", "0.3,0.30000000001", "", "0.3,", "0.3,,0.5", "0.3,0.3"]
    if p.kind in ("str", "path"):
        return [""]
    return []


def required_args(command: str, tmp_path) -> list[str]:
    return {
        "select": [],
        "graph": ["--out", str(tmp_path / "g")],
        "mp": [
            "--graph",
            str(tmp_path),
            "--scores",
            str(tmp_path / "s.npy"),
            "--out",
            str(tmp_path / "o.npy"),
            "--gamma",
            "1",
        ],  # fmt: skip
        "synth": ["--out", str(tmp_path / "p"), "--rows", "10"],
    }[command]


CASES = [
    pytest.param(command, p, text, id=f"{command}-{p.name}-{text!r}")
    for p in PARAMS.values()
    for command in p.commands
    for text in invalid_texts(p)
]


@pytest.mark.parametrize(("command", "param", "text"), CASES)
def test_every_invalid_value_is_one_line_and_exit_1(command, param, text, tmp_path, capsys):
    argv = [command, *required_args(command, tmp_path), f"{param.flag}={text}"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("d2scale: error: "), err
    assert param.name in err[0] or param.flag in err[0], err[0]
    assert not (tmp_path / "d2scale-out").exists()


def test_argparse_errors_are_one_line_and_exit_1(capsys):
    for argv in (["select", "--no-such-flag"], ["nope"], ["mp"]):  # a bare d2scale: help
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("d2scale: error: "), err


def test_library_checks_use_the_same_table():
    with pytest.raises(D2ScaleError, match="the 'gamma' parameter must be a finite number ≥ 0"):
        SelectParams(gamma=-1.0).validate()
    with pytest.raises(D2ScaleError, match="'seed' parameter must be an integer in"):
        SelectParams(seed=-1).validate()
    with pytest.raises(D2ScaleError, match="'metadata_dir' parameter must be a non-empty"):
        SelectParams(metadata_dir="").validate()
    assert check("n_neighbors", 3) == 3


def test_select_params_fields_are_the_table_entries_of_select():
    names = {f.name for f in dataclasses.fields(SelectParams)}
    assert names == {p.name for p in PARAMS.values() if "select" in p.commands} - {"quiet"}
    for f in dataclasses.fields(SelectParams):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        table = PARAMS[f.name].default
        assert default == (list(table) if isinstance(table, tuple) else table), f.name


def test_sizes_need_a_unit():
    assert parse_bytes("512MB") == 512 * 10**6 and parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("1.5 gb") == 1_500_000_000
    with pytest.raises(D2ScaleError, match="with a unit"):
        parse_bytes("8")


def test_budget_check_accepts_numpy_integers():
    from d2scale.params import check_budget

    assert check_budget(np.int64(3), 5) == 3 and check_budget(None, 5) == 5
    for bad in (6, -1, 2.0, True, "3"):
        with pytest.raises(D2ScaleError, match="'budget' parameter"):
            check_budget(bad, 5)


def test_an_integer_beyond_2_62_is_refused_by_every_integer_parser():
    """No integer parameter means more than 2^62; a larger one would overflow int64 (torch
    thread counts, numpy sizes) as a traceback. Refused by the table's check, by the vision
    and web commands' check and by their argparse type."""
    import argparse
    import re

    from d2scale.cli.flags import int_type
    from d2scale.params import PARAMS, TOO_LARGE, check_option
    from d2scale.vision.params import VISION as V

    huge = 10**23
    with pytest.raises(D2ScaleError, match="at most 2\\^62"):
        PARAMS["n_neighbors"].check(huge)
    with pytest.raises(D2ScaleError, match="--threads must be an integer of at most 2\\^62"):
        check_option(V["threads"], huge)
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"expected {TOO_LARGE}")):
        int_type(V["threads"])(str(huge))
    assert PARAMS["n_neighbors"].check(2**62) == 2**62  # the bound itself is an integer
