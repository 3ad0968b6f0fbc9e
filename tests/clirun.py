"""``d2scale ARGS`` in the test process: the CLI's ``main`` with its output captured."""

from __future__ import annotations

import contextlib
import io
import traceback
from dataclasses import dataclass


@dataclass
class CliResult:
    """What a command gave: exit status and its captured output."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args) -> CliResult:
    """``d2scale ARGS`` through the CLI's ``main`` in this process (no interpreter start-up);
    an exception escaping ``main`` is a traceback on stderr and status 99."""
    from d2scale.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # --help, --version
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except Exception:
            traceback.print_exc()
            code = 99
    return CliResult(code, out.getvalue(), err.getvalue())
