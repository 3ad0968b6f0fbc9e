"""Progress for people and machines: terminal bars, plain lines every 10 s when stderr is
not a terminal, ``--log-json`` events, and a heartbeat that speaks up when a step has said
nothing for 10 s (a k-means, a kernel's first compilation); one timer (:func:`timed`)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from d2scale.errors import D2ScaleError

ProgressFn = Callable[[str], None]
PLAIN_INTERVAL_S = 10.0  # plain (non-terminal) progress: at most one line per step this often
HEARTBEAT_S = 10.0  # silence after which the heartbeat repeats what is running, and for how long
_COUNT = re.compile(r"^(?P<label>.+?): (?P<done>\d+)/(?P<total>\d+)(?: (?P<unit>[\w ]+))?$")
_METER = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]"
_TALLY = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]"  # a count whose total is unknown
_WARNING = re.compile(r"(^|: )warning: ")  # "warning: …", "report: warning: …"


class Progress:
    """Progress of a run on stderr, and machine-readable events.

    Messages of the form ``"label: 3/40 unit"`` (and :meth:`count`) are counted steps: on a
    terminal each is a live tqdm bar with count, rate and ETA; otherwise the same meter is a
    plain line at most every ``interval`` seconds and at the step's end. Other messages and
    stage starts/ends are lines ``[d2scale   3.2s] message``. ``quiet`` prints nothing but
    warnings (``warning: …``, as ``d2scale: warning: …``: they report a degraded result);
    ``log_json`` (a path; ``"-"``: stderr, instead of the human output) receives one JSON
    object per event (``event``: message, stage, progress, heartbeat; ``time``,
    ``elapsed_s``). With ``heartbeat`` (seconds; the commands use :data:`HEARTBEAT_S`), a
    silence that long brings a ``heartbeat`` event and line naming what is running, for how
    long, and its last count with its unit; :meth:`close` stops it.
    """

    def __init__(
        self,
        quiet: bool = False,
        log_json: str | None = None,
        stream=None,
        interval: float = PLAIN_INTERVAL_S,
        tty: bool | None = None,
        heartbeat: float | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet or log_json == "-"
        self.loud_warnings = quiet and log_json != "-"  # JSON on stderr carries them itself
        self.tty = _isatty(self.stream) if tty is None else tty
        self.interval = interval
        self.start = time.perf_counter()
        self.lock = threading.RLock()
        self.events = _open_events(log_json, self.stream)
        self.bars: dict[str, Any] = {}  # label → tqdm bar (terminal)
        self.steps: dict[str, list[float]] = {}  # label → [start, last line] (plain lines)
        self.marks: dict[str, float] = {}  # message → when it was last said (a step's start)
        self.last_event = self.start  # when anything was last said or logged
        self.running: dict[str, Any] = {"label": "starting", "since": self.start}
        self._stop = threading.Event()
        if heartbeat and (not self.quiet or self.events is not None):
            beat = threading.Thread(target=self._beat, args=(heartbeat,), daemon=True,
                                    name="d2scale-heartbeat")  # fmt: skip
            beat.start()

    def __call__(self, message: str) -> None:
        self.say(message)

    def say(self, message: str, scope: str | None = None) -> None:
        """A message; ``"label: 3/40 unit"`` is a counted step. ``scope``: e.g. a bucket."""
        m = _COUNT.match(message)
        if m:
            self.count(m["label"], int(m["done"]), int(m["total"]), m["unit"] or "", scope)
            return
        self.marks[_scoped(scope, message)] = time.perf_counter()
        self._running(_scoped(scope, message))
        self.event("message", message=message, scope=scope)
        if self.loud_warnings and _WARNING.search(message):
            with self.lock:
                print(f"d2scale: {_scoped(scope, message)}", file=self.stream, flush=True)
        self._line(_scoped(scope, message))

    def stage(
        self, name: str, status: str, seconds: float | None = None, scope: str | None = None,
        **facts,
    ) -> None:  # fmt: skip
        """A stage started (``start``), finished (``done``) or was reused (``reused``)."""
        self.event("stage", stage=name, status=status, seconds=seconds, scope=scope, **facts)
        label = _scoped(scope, name)
        self._running(label if status == "start" else f"after {label}")
        if status == "start":
            self.marks[label] = time.perf_counter()
            self._line(f"{label} ...")
        elif status == "reused":
            self._line(f"{label}: reusing {facts.get('directory', 'a finished result')}")
        else:
            self._line(f"{label} {status} in {seconds or 0.0:.1f}s")

    def count(
        self, label: str, done: int, total: int | None, unit: str = "", scope: str | None = None
    ) -> None:
        """``done`` of ``total`` ``unit`` of step ``label`` are finished (``total`` None: not
        known yet; the step ends with a call that gives it)."""
        self._running(_scoped(scope, label), done=done, total=total, unit=unit or None)
        self.event("progress", label=label, done=done, total=total, unit=unit, scope=scope)
        if self.quiet:
            return
        with self.lock:
            if self.tty:
                self._bar(_scoped(scope, label), done, total, unit)
            else:
                self._plain(_scoped(scope, label), done, total, unit)

    def scoped(self, scope: str) -> ScopedProgress:
        """This progress with every message, stage and step tagged ``scope`` (a bucket)."""
        return ScopedProgress(self, scope)

    def event(self, kind: str, **fields) -> None:
        """Write one JSON event (when ``log_json`` is set)."""
        self.last_event = time.perf_counter()
        if self.events is None:
            return
        now = time.time()
        record = {"time": round(now, 3), "elapsed_s": round(self.elapsed(), 3), "event": kind}
        record.update({k: v for k, v in fields.items() if v is not None})
        with self.lock:
            self.events.write(json.dumps(record, default=str) + "\n")
            self.events.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        """Stop the heartbeat, finish open bars and close the event log."""
        self._stop.set()
        with self.lock:
            for bar in self.bars.values():
                bar.close()
            self.bars.clear()
            if self.events not in (None, self.stream):
                self.events.close()
            self.events = None

    def working(self, label: str) -> None:
        """Name what runs now, for the heartbeat only (no line, no event)."""
        self._running(label)

    def _running(self, label: str, **count) -> None:
        """Remember what runs now (a step keeps its start across its counts)."""
        same = self.running["label"] == label
        since = self.running["since"] if same else time.perf_counter()
        self.running = {"label": label, "since": since, **count}

    def _beat(self, period: float) -> None:
        """Daemon thread: after ``period`` s without an event, say what is still running."""
        while not self._stop.wait(max(0.05, self.last_event + period - time.perf_counter())):
            if time.perf_counter() - self.last_event < period:
                continue
            with self.lock:
                if self._stop.is_set():
                    return
                self._heartbeat()

    def _heartbeat(self) -> None:
        now, run = time.perf_counter(), dict(self.running)
        label, seconds = run.pop("label"), round(now - run.pop("since"), 1)
        self.event("heartbeat", label=label, seconds=seconds, **run)
        counted = f"{run['done']:,}/{run['total']:,} {run.get('unit') or ''}".rstrip() + ", " \
            if "done" in run else ""  # fmt: skip
        if self.tty and label in self.bars:
            self.bars[label].refresh()  # the bar's own clock and rate move on
        else:
            self._line(f"{label}: {counted}still working ({seconds:.0f} s)")

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        line = f"[d2scale {self.elapsed():7.1f}s] {text}"
        with self.lock:
            if self.tty and self.bars:
                from tqdm import tqdm

                tqdm.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)

    def _bar(self, label: str, done: int, total: int, unit: str) -> None:
        from tqdm import tqdm

        bar = self.bars.get(label)
        if bar is None or done < bar.n or total != bar.total and bar.total is not None:
            if bar is not None:
                bar.close()
            bar = self.bars[label] = tqdm(
                total=total, desc=label, unit=f" {unit}" if unit else "it", file=self.stream,
                dynamic_ncols=True, leave=True, mininterval=0.2,
            )  # fmt: skip
        if total is not None and bar.total is None:
            bar.total = total
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()
            del self.bars[label]

    def _plain(self, label: str, done: int, total: int, unit: str) -> None:
        from tqdm import tqdm

        now = time.perf_counter()
        step = self.steps.get(label)
        if step is None or done == 0:
            step = self.steps[label] = [self.marks.get(label, now), -float("inf")]
        finished = total is not None and done >= total
        if not finished and now - step[1] < self.interval:
            return
        step[1] = now
        meter = tqdm.format_meter(done, total, now - step[0], prefix=label, unit=unit or "it",
                                  bar_format=_METER if total is not None else _TALLY)  # fmt: skip
        print(f"[d2scale {self.elapsed():7.1f}s] {meter}", file=self.stream, flush=True)
        if finished:
            del self.steps[label]


class ScopedProgress(Progress):
    """A :class:`Progress` that tags everything with ``scope`` and writes through ``parent``."""

    def __init__(self, parent: Progress, scope: str) -> None:  # noqa: D107 - no own output
        self.parent, self.scope = parent, scope

    def say(self, message: str, scope: str | None = None) -> None:
        self.parent.say(message, _scoped(self.scope, scope))

    def stage(self, name, status, seconds=None, scope=None, **facts) -> None:
        self.parent.stage(name, status, seconds, _scoped(self.scope, scope), **facts)

    def count(self, label, done, total, unit="", scope=None) -> None:
        self.parent.count(label, done, total, unit, _scoped(self.scope, scope))

    def event(self, kind: str, **fields) -> None:
        self.parent.event(kind, **{"scope": self.scope, **fields})

    def elapsed(self) -> float:
        return self.parent.elapsed()

    def close(self) -> None:
        """The parent owns the output."""


def _scoped(scope: str | None, text: str | None) -> str | None:
    if scope is None:
        return text
    return scope if text is None else f"{scope}: {text}"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _open_events(log_json: str | None, stream):
    if log_json is None:
        return None
    if log_json == "-":
        return stream
    from d2scale import io

    if not io.is_local(log_json):
        raise D2ScaleError(f"--log-json needs a local file or '-'; got {log_json}")
    try:
        return open(io.local_path(log_json), "a", encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise D2ScaleError(f"cannot write the JSON log {log_json}: {e.strerror or e}") from None


def scoped(progress: ProgressFn, scope: str) -> ProgressFn:
    """``progress`` with everything tagged ``scope`` (structured when it is a Progress)."""
    if isinstance(progress, Progress):
        return progress.scoped(scope)
    return lambda message: progress(f"{scope}: {message}")


def plural(n: int, noun: str) -> str:
    """``1 bucket``, ``2 buckets``, ``1,000 rows``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def say_stage(progress: ProgressFn, name: str, status: str, seconds=None, **facts) -> None:
    """Announce a stage event through ``progress`` (structured when it is a :class:`Progress`)."""
    if isinstance(progress, Progress):
        progress.stage(name, status, seconds, **facts)
    elif status == "start":
        progress(f"{name} ...")
    elif status == "reused":
        progress(f"{name}: reusing {facts.get('directory')}")
    else:
        progress(f"{name} {status} in {seconds or 0.0:.1f}s")


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``timings[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
