"""Keyed stages: each stage of ``select`` (read, graph, forward, reverse) stores its result
under ``OUT/work/<stage>-<key>/``. ``key`` hashes the input fingerprint, the parameters the
stage depends on and the keys of the stages before it, so a rerun that changes only
``--gamma`` reuses the graph and the forward pass. A stage directory counts only once its
marker ``_done.json`` exists; the marker is written last (datatrove's completion files), so a
killed stage is simply recomputed (the graph stage resumes its own parts). The marker also
records the size of every file the stage wrote: a finished stage whose file was truncated or
deleted since is recomputed too.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from d2scale.progress import ProgressFn, say_stage, timed

MARKER = "_done.json"
FILES = "_files"  # the marker's record of the stage's files: name → bytes


def pause_point(name: str) -> None:
    """Test hook for fault injection: with ``D2SCALE_PAUSE_AT=name`` the process announces
    ``paused at NAME`` on stderr and sleeps, so a test can SIGKILL it exactly here."""
    if os.environ.get("D2SCALE_PAUSE_AT") == name:
        print(f"d2scale: paused at {name}", file=sys.stderr, flush=True)
        time.sleep(3600)


def stage_key(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts``."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageRun:
    """The result of one stage: its directory, whether it was reused, and its facts."""

    name: str
    key: str
    directory: str
    reused: bool
    info: dict = field(default_factory=dict)


class Stages:
    """Runs keyed stages under ``root`` (``OUT/work``), timing and announcing each."""

    def __init__(self, root: str, progress: ProgressFn, timings: dict[str, float]) -> None:
        from d2scale import io

        self.io = io
        self.root = root
        self.progress = progress
        self.timings = timings
        self.runs: dict[str, StageRun] = {}
        io.makedirs(root)

    def directory(self, name: str, key: str) -> str:
        return self.io.join(self.root, f"{name}-{key}")

    def done(self, directory: str) -> dict | None:
        """The marker's facts if ``directory`` holds a finished stage whose files are as the
        stage wrote them, else None."""
        marker = self.io.join(directory, MARKER)
        if not self.io.exists(marker):
            return None
        try:
            info = self.io.read_json(marker)
        except (OSError, ValueError):
            return None  # a damaged marker: recompute
        if not isinstance(info, dict):
            return None
        files = info.pop(FILES, None)  # absent in markers of earlier versions
        if files is not None:
            sizes = self.io.file_sizes(directory)
            if any(sizes.get(name) != size for name, size in files.items()):
                self.progress(f"{os.path.basename(directory)}: a file is damaged; recomputing")
                return None
        return info

    def run(
        self,
        name: str,
        key: str,
        compute: Callable[[str], dict],
        directory: str | None = None,
        accept: Callable[[dict], bool] | None = None,
    ) -> StageRun:
        """Reuse the finished stage ``name``/``key`` (if ``accept(facts)``, when given) or
        run ``compute(directory)``, which writes its files there and returns facts for the
        marker (and ``run.json``)."""
        directory = directory or self.directory(name, key)
        info = self.done(directory)
        if info is not None and (accept is None or accept(info)):
            say_stage(self.progress, name, "reused", directory=directory)
            self.timings.setdefault(name, 0.0)
            run = StageRun(name, key, directory, True, info)
        else:
            say_stage(self.progress, name, "start")
            self.io.remove(self.io.join(directory, MARKER))
            self.io.makedirs(directory)
            with timed(self.timings, name):
                info = compute(directory)
            pause_point(f"before-marker-{name}")
            files = {f: s for f, s in self.io.file_sizes(directory).items() if f != MARKER}
            self.io.save_json(self.io.join(directory, MARKER), {**info, FILES: files})
            say_stage(self.progress, name, "done", round(self.timings[name], 3))
            run = StageRun(name, key, directory, False, info)
        self.runs[name] = run
        pause_point(f"after-{name}")
        return run
