"""What runs the stages: the Dask client, progress, one timer, and keyed stage results.

A stage of ``select`` (read, graph, forward, reverse) stores its result under
``OUT/work/<stage>-<key>/``: ``key`` hashes the input fingerprint, the parameters the stage
depends on and the keys of the stages before it, so a rerun that changes only ``--gamma``
reuses the graph and the forward pass. A stage directory counts only once its marker
``_done.json`` exists; the marker is written last (datatrove's completion files), so a
killed stage is simply recomputed (the graph stage resumes its own parts).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from d2scale.errors import D2ScaleError

ProgressFn = Callable[[str], None]
MARKER = "_done.json"


class Progress:
    """Prints ``[d2scale   3.2s] message`` lines to stderr (nothing when ``quiet``)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            print(f"[d2scale {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``timings[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


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
        """The marker's facts if ``directory`` holds a finished stage, else None."""
        marker = self.io.join(directory, MARKER)
        if not self.io.exists(marker):
            return None
        try:
            return self.io.read_json(marker)
        except (OSError, ValueError):
            return None  # a damaged marker: recompute

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
            self.progress(f"{name}: reusing {directory}")
            self.timings.setdefault(name, 0.0)
            run = StageRun(name, key, directory, True, info)
        else:
            self.progress(f"{name} ...")
            self.io.remove(self.io.join(directory, MARKER))
            self.io.makedirs(directory)
            with timed(self.timings, name):
                info = compute(directory)
            pause_point(f"before-marker-{name}")
            self.io.save_json(self.io.join(directory, MARKER), info)
            self.progress(f"{name} done in {self.timings[name]:.1f}s")
            run = StageRun(name, key, directory, False, info)
        self.runs[name] = run
        pause_point(f"after-{name}")
        return run


def _quiet_dask_logs() -> None:
    for name in ("distributed", "bokeh", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """A ``distributed.Client``: to ``scheduler`` if given, else a local in-process cluster.

    The local cluster runs one worker with ``workers`` threads (default: all cores); NumPy,
    faiss and the compiled kernels release the GIL, so threads use every core.
    """
    from distributed import Client, LocalCluster

    _quiet_dask_logs()
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, ValueError, TypeError) as e:
            msg = f"cannot connect to the Dask scheduler at {scheduler}: {e}"
            raise D2ScaleError(msg) from None
        with client:
            yield client
        return
    threads = workers or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=threads,
            processes=False,
            dashboard_address=":0",  # a free port: concurrent runs must not collide on 8787
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
