"""Execution around the stages: the Dask client, progress lines and stage timings."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

from d2scale.errors import D2ScaleError

ProgressFn = Callable[[str], None]


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
def stage(name: str, timings: dict[str, float], progress: ProgressFn) -> Iterator[None]:
    """Time a stage into ``timings[name]`` (seconds) and announce its start and end."""
    progress(f"{name} ...")
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)
    progress(f"{name} done in {timings[name]:.1f}s")


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """A ``distributed.Client``: to ``scheduler`` if given, else a local in-process cluster.

    The local cluster runs one worker with ``workers`` threads (default: all cores); NumPy,
    faiss and the compiled kernels release the GIL, so threads use every core.
    """
    from distributed import Client, LocalCluster

    for name in ("distributed", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # a failed task's exception is re-raised to the caller, which reports it in one line
    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as e:
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
