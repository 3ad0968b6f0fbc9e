"""Every ``d2scale …`` command line in the README's code blocks parses: its options exist and
its values pass their checks (nothing is run). The README stays the user's document."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from d2scale.cli.main import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_LINES = 450


def command_lines(text: str) -> list[str]:
    """``d2scale`` commands of the ```bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["d2scale"]:
                commands.append(shlex.join(words))
    return commands


COMMANDS = command_lines(README.read_text())


def test_the_readme_is_short_and_shows_commands():
    assert len(README.read_text().splitlines()) <= MAX_LINES
    assert len(COMMANDS) >= 20
    assert {c.split()[1] for c in COMMANDS} >= {"select", "graph", "mp", "synth", "embed",
                                               "export", "vision", "batch"}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    build_parser().parse_args(shlex.split(command)[1:])


def test_a_wrong_command_would_be_caught():
    from d2scale.errors import D2ScaleError

    with pytest.raises(D2ScaleError, match="unrecognized arguments"):
        build_parser().parse_args(["select", "--fration", "0.3"])
    with pytest.raises(D2ScaleError, match="'fraction' parameter must be in"):
        build_parser().parse_args(["select", "--fraction", "1.5"])
