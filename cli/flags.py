"""Command-line flags generated from the parameter table (:data:`d2scale.params.PARAMS`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from d2scale.params import PARAMS, TOO_LARGE, Param, for_command, too_large


def add_flags(
    parser: argparse.ArgumentParser, command: str, required: tuple[str, ...] = ()
) -> None:
    """Add a flag for every parameter of ``command``, grouped as in the table; a parameter
    that is the command's only one of its table group (``synth --seed``) joins the
    command's own options instead of a group named for another command's work."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    mine = [p.group for p in for_command(command)]
    for p in for_command(command):
        if mine.count(p.group) == 1 and sum(q.group == p.group for q in PARAMS.values()) > 1:
            group = parser
        else:
            group = groups.get(p.group) or groups.setdefault(
                p.group, parser.add_argument_group(p.group)
            )
        if p.kind == "bool":
            group.add_argument(p.flag, dest=p.name, action="store_true", help=p.help)
            continue
        is_required = p.name in required
        if p.kind == "steps":
            group.add_argument(p.flag, dest=p.name, type=PARAMS["method"].parse, action="append",
                               default=[], metavar=p.metavar, help=flag_help(p))  # fmt: skip
            continue
        group.add_argument(
            p.flag,
            dest=p.name,
            type=p.parse,
            default=None if is_required else p.default,
            required=is_required,
            metavar=p.metavar or ("{" + ",".join(p.choices) + "}" if p.choices else None),
            help=flag_help(p, is_required),
        )


def flag_help(p: Param, required: bool = False) -> str:
    """``p``'s help with its default, unless required or already named there."""
    if required or "default" in p.help:
        return p.help
    if p.default is None or p.default == ():
        return f"{p.help} (default: none)"
    default = ",".join(map(str, p.default)) if isinstance(p.default, tuple) else p.default
    return f"{p.help} (default {default})"


def values(args: argparse.Namespace, command: str) -> dict:
    """The parsed parameter values of ``command`` as a dict."""
    return {p.name: getattr(args, p.name) for p in for_command(command)}


def add_flag(group, p: Param, *aliases: str, **overrides: Any) -> argparse.Action:
    """One option of a table entry ``p`` (``d2scale.vision.params``, web commands): its flag
    and ``aliases``, default, choices, and an integer range checked as argparse words it
    ("expected an integer ≥ 1, got 0"); ``overrides`` are further ``add_argument`` keywords
    (help of this command, an action, required, …)."""
    kw: dict[str, Any] = {"dest": p.name, "help": p.help or None}
    if p.kind == "bool":
        kw["action"] = "store_true"
    else:
        kw["default"] = p.default
        if p.choices:
            kw["choices"] = p.choices
        if p.kind == "int":
            kw["type"] = int_type(p)
        elif p.kind == "float":
            kw["type"] = float
        if p.metavar:
            kw["metavar"] = p.metavar
    return group.add_argument(p.flag, *aliases, **{**kw, **overrides})


def int_type(p: Param) -> Callable[[str], int]:
    """argparse ``type=`` of an integer entry: its range from the table."""
    what = f"expected an integer {p.range_text()}".rstrip()

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if not p._in_range(value):
            raise argparse.ArgumentTypeError(f"{what}, got {value}")
        if too_large(value):
            raise argparse.ArgumentTypeError(f"expected {TOO_LARGE}, got {value}")
        return value

    return parse
