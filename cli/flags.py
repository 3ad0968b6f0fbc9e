"""Command-line flags generated from the parameter table (:data:`d2scale.params.PARAMS`)."""

from __future__ import annotations

import argparse

from d2scale.params import PARAMS, Param, for_command


def add_flags(
    parser: argparse.ArgumentParser, command: str, required: tuple[str, ...] = ()
) -> None:
    """Add a flag for every parameter of ``command``, grouped as in the table."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for p in for_command(command):
        group = groups.get(p.group) or groups.setdefault(
            p.group, parser.add_argument_group(p.group)
        )
        if p.kind == "bool":
            group.add_argument(p.flag, dest=p.name, action="store_true", help=p.help)
            continue
        is_required = p.name in required
        if p.kind == "steps":
            group.add_argument(p.flag, dest=p.name, type=PARAMS["method"].parse, action="append",
                               default=[], metavar=p.metavar, help=p.help)  # fmt: skip
            continue
        group.add_argument(
            p.flag,
            dest=p.name,
            type=p.parse,
            default=None if is_required else p.default,
            required=is_required,
            metavar=p.metavar or ("{" + ",".join(p.choices) + "}" if p.choices else None),
            help=_help(p, is_required),
        )


def _help(p: Param, required: bool) -> str:
    if required or p.default is None:
        return p.help
    default = ",".join(map(str, p.default)) if isinstance(p.default, tuple) else p.default
    return f"{p.help} (default {default})"


def values(args: argparse.Namespace, command: str) -> dict:
    """The parsed parameter values of ``command`` as a dict."""
    return {p.name: getattr(args, p.name) for p in for_command(command)}
