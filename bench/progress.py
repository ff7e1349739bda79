"""Progress of long work (decoding, extraction, training epochs): a bar on a terminal; anywhere else (a log file,
a pipe, CI) a plain line every INTERVAL seconds or tenth of the work, with the count, rate and time left.

rich draws its bars only on a terminal, so a job writing to a log used to say nothing for as long as it ran.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich import get_console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

INTERVAL = 30.0  # seconds between plain lines (a line is also printed at every tenth of the work)
STEPS = 10


class Progress:
    """`advance(n)` as work is done; `update(what=..., status=...)` to rename the work or say how it goes."""

    def __init__(self, what: str, total: int, unit: str, done: int, interval: float, bar: Bar | None):
        self.what, self.total, self.unit, self.done, self.status = what, total, unit, done, ""
        self.interval, self.bar = interval, bar
        self.task = bar.add_task(what, total=total, completed=done, status="") if bar else None
        self.started, self.start_count, self.shown = time.monotonic(), done, done
        self.last_line, self.next_step = self.started, self._step_after(done)

    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.done += n
        self.update(status=status)

    def update(self, what: str | None = None, status: str | None = None) -> None:
        self.what, self.status = what or self.what, self.status if status is None else status
        if self.bar is not None:
            self.bar.update(self.task, description=self.what, completed=self.done, status=self.status)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval or self.done >= self.next_step:
            self.line(now)

    def line(self, now: float) -> None:
        """One plain line on stderr: what, how far, how fast, how long still."""
        self.last_line, self.next_step, self.shown = now, self._step_after(self.done), self.done
        rate = (self.done - self.start_count) / max(now - self.started, 1e-9)
        left = f"{clock((self.total - self.done) / rate)} left" if rate > 0 else "time left unknown"
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        status = f"; {self.status}" if self.status else ""
        print(f"{self.what}: {self.done}/{self.total} {self.unit}{share}, {rate:.1f} {self.unit}/s, {left}{status}",
              file=sys.stderr, flush=True)

    def _step_after(self, done: int) -> float:
        """The next tenth of the work past `done` (a line is due there)."""
        step = self.total / STEPS
        return (done // step + 1) * step if step else float("inf")


@contextmanager
def progress(what: str, total: int, *, unit: str = "images", done: int = 0,
             interval: float | None = None) -> Iterator[Progress]:
    """Track `total` units of work (`done` of them finished before, e.g. by an interrupted run)."""
    if get_console().is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
        with Bar(*columns) as bar:
            yield Progress(what, total, unit, done, 0.0, bar)
        return
    tracker = Progress(what, total, unit, done, INTERVAL if interval is None else interval, None)
    yield tracker
    if tracker.done != tracker.shown:  # where the work ended, if no line said it yet
        tracker.line(time.monotonic())


def clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
