"""Shared helpers for the benchmark scripts: host facts and the git revision for the JSON,
and the command that runs this interpreter's d2scale."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

D2SCALE = [sys.executable, "-m", "d2scale.cli.main"]  # this interpreter's d2scale, PATH or not


def host_info() -> dict:
    """CPU model, core count, Python and platform, git revision (best effort)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "git_revision": rev}  # fmt: skip
