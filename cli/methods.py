"""``d2scale methods``: the selection methods ``select --method`` and ``--then`` accept."""

from __future__ import annotations


def add_parser(sub, epilog: str) -> None:
    p = sub.add_parser("methods", help="list the selection methods", epilog=epilog)
    p.set_defaults(run=run)


def run(args) -> int:
    import importlib

    from d2scale.methods.registry import FILTERS, METHODS

    for name, module in METHODS.items():
        kind = "filter" if name in FILTERS else "rank"
        print(f"{name:18s} {kind:7s} {importlib.import_module(module).DESCRIPTION}")
    return 0
