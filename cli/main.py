"""``d2scale`` command line: flags (generated from the parameter table) → library calls.

Errors of any kind the user can fix print one line, ``d2scale: error: …``, and exit with
status 1; argparse's own errors do the same. Heavy libraries are imported inside each
command, so ``d2scale mp`` starts without Dask, faiss or pyarrow; the command modules
themselves are imported inside :func:`main`, so a Ctrl-C while they load is one line too.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import io
import os
import select
import signal
import sys
import threading

from d2scale.errors import D2ScaleError

EPILOG = "Docs: README.md. Errors print one line and exit with status 1."
COMMANDS = ("select", "batch", "report", "graph", "mp", "synth", "methods", "web", "vision",
            "bench")  # fmt: skip
INTERRUPTED = 130  # the shell's status for a SIGINT
BROKEN_PIPE = 141  # the shell's status for a SIGPIPE: the reader of stdout stopped (| head)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 1, like every other error."""

    def error(self, message: str):
        where = self.prog.removeprefix("d2scale").strip()  # "select" in a subcommand
        raise D2ScaleError(f"{where}: {message}" if where else message)

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            raise D2ScaleError(_unrecognized(self, parsed, extra))
        return parsed


def main(argv: list[str] | None = None) -> int:
    with _noting_interrupts() as interrupted:
        try:
            return _main(argv)
        except Exception:
            # A Ctrl-C inside a C extension's import surfaces as another error (numpy: an
            # ImportError "Importing the numpy C-extensions failed"): still an interruption.
            if not interrupted.is_set():
                raise
            print("d2scale: interrupted", file=sys.stderr)
            return INTERRUPTED


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        argv = sys.argv[1:] if argv is None else argv
        if not argv:  # bare `d2scale`: what it can do
            parser.print_help()
            return 0
        args = parser.parse_args(argv)
        return int(args.run(args) or 0)
    except D2ScaleError as e:
        print(f"d2scale: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError as e:
        if _stdout_closed():  # `d2scale methods | head`: stop quietly, as other tools do
            return BROKEN_PIPE
        print(f"d2scale: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as e:
        print(f"d2scale: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("d2scale: interrupted", file=sys.stderr)
        return INTERRUPTED


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has gone (poll reports an error on it); its
    file descriptor then points to /dev/null, so that flushing it at exit does not fail."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # no fd, no poll
        return False
    return True


@contextlib.contextmanager
def _noting_interrupts():
    """SIGINT raises KeyboardInterrupt as usual and is also noted in the yielded event (in
    the main thread, where Python delivers signals; elsewhere only the event is yielded)."""
    interrupted = threading.Event()

    def on_sigint(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread
        yield interrupted
        return
    if previous is signal.SIG_IGN:  # an ignored SIGINT (a background job) stays ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="d2scale",
        description="D2 Pruning data selection for DataComp-style pools.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"d2scale.cli.{name}").add_parser(sub, EPILOG)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, parsed, extra: list[str]) -> str:
    """``select: unrecognized arguments: --fration 0.3 (did you mean --fraction?)``."""
    command = getattr(parsed, "command", None)
    target = _subparser(parser, command) or parser
    flags = [s for a in target._actions for s in a.option_strings if s.startswith("--")]
    unknown = next((x.split("=")[0] for x in extra if x.startswith("--")), None)
    close = difflib.get_close_matches(unknown, flags, n=1) if unknown else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    where = f"{command}: " if command else ""
    return f"{where}unrecognized arguments: {' '.join(extra)}{hint}"


def _subparser(parser: argparse.ArgumentParser, command: str | None):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return None


def _version() -> str:
    from d2scale import __version__

    return f"d2scale {__version__}"


if __name__ == "__main__":
    sys.exit(main())
