"""Counted progress of the long vision steps (training batches, evaluated rows, classes
selected, images decoded), reported through a progress callable such as
:class:`d2scale.progress.Progress`, which shows ``"label: 3/40 unit"`` messages as a bar on a
terminal, as a plain line at most every 10 s otherwise, and as a ``progress`` event with
``--log-json``."""

from __future__ import annotations

import time
from collections.abc import Callable

REPORT_EVERY_S = 2.0  # at most one report per step this often (events, bars)


class Meter:
    """``meter(done)`` reports ``done`` of ``total`` ``unit`` of step ``label``: the first
    time after ``every`` seconds (a step shorter than that says nothing), then at most every
    ``every`` seconds, and at the end if anything was said before."""

    def __init__(
        self,
        progress: Callable[[str], None] | None,
        label: str,
        total: int,
        unit: str,
        every: float | None = None,
    ) -> None:
        self.progress, self.label, self.total, self.unit = progress, label, total, unit
        self.every = REPORT_EVERY_S if every is None else every
        self.last = time.monotonic()
        self.said = -1  # the last count said (-1: none yet)

    def __call__(self, done: int) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if done >= self.total:
            if 0 <= self.said < self.total:
                self._say(self.total)
            return
        if now - self.last >= self.every:
            self.last = now
            self._say(done)

    def _say(self, done: int) -> None:
        self.said = done
        self.progress(f"{self.label}: {done}/{self.total} {self.unit}")


def meter(progress, label: str, total: int, unit: str) -> Meter:
    """A :class:`Meter`; ``progress`` None or False gives a silent one."""
    return Meter(progress or None, label, total, unit)
