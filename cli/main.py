"""``d2scale`` command line: flags (generated from the parameter table) → library calls.

Errors of any kind the user can fix print one line, ``d2scale: error: …``, and exit with
status 1; argparse's own errors do the same. Heavy libraries are imported inside each
command, so ``d2scale mp`` starts without Dask, faiss or pyarrow.
"""

from __future__ import annotations

import argparse
import sys

from d2scale.cli import batch, bench, graph, methods, mp, report, select, synth, vision, web
from d2scale.errors import D2ScaleError

EPILOG = "Docs: README.md. Errors print one line and exit with status 1."


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 1, like every other error."""

    def error(self, message: str):
        raise D2ScaleError(f"{self.prog}: {message}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except D2ScaleError as e:
        print(f"d2scale: error: {e}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as e:
        print(f"d2scale: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("d2scale: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="d2scale",
        description="D2 Pruning data selection for DataComp-style pools.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (select, batch, report, graph, mp, synth, methods, web, vision, bench):
        command.add_parser(sub, EPILOG)
    return parser


def _version() -> str:
    from d2scale import __version__

    return f"d2scale {__version__}"


if __name__ == "__main__":
    sys.exit(main())
