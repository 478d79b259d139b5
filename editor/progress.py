"""Live progress on stderr: rich bars with an ETA on a terminal, plain lines anywhere else.

stdout belongs to the command's result (``--json``), so everything here writes to stderr. On a
terminal, a stream of passages gets one bar for the passages and one for the current stage
(reflect and evaluate advance per generated token, train per step). When stderr is a file or a
pipe, each event is one line, never wrapped, with a heartbeat at most every few seconds during a
long stage, so a log shows that the work goes on.

>>> import io
>>> out = io.StringIO()
>>> progress = LineProgress(out, clock=lambda: 0.0)
>>> with progress.stage("train", total=20, unit="steps") as stage:
...     stage.advance(20)
>>> print(out.getvalue().strip())
0.0s train
0.0s train done in 0.0s
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Protocol


class Stage(Protocol):
    def advance(self, n: float = 1) -> None: ...

    def grow(self, n: int) -> None: ...


class Progress(Protocol):
    """What the engine reports to: free-form lines, stages with a size, and passages of a stream."""

    def say(self, message: str) -> None: ...

    def stage(self, name: str, total: int | None = None, unit: str = "") -> contextlib.AbstractContextManager: ...

    def passages(self, total: int | None) -> contextlib.AbstractContextManager: ...


class _NullStage:
    def advance(self, n: float = 1) -> None:
        pass

    def grow(self, n: int) -> None:
        pass


class QuietProgress:
    """Reports nothing (library use, benches)."""

    def say(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "") -> Iterator[_NullStage]:
        yield _NullStage()

    @contextlib.contextmanager
    def passages(self, total: int | None) -> Iterator[_NullStage]:
        yield _NullStage()


class _LineStage:
    def __init__(self, owner: "LineProgress", name: str, total: int | None, unit: str):
        self.owner, self.name, self.total, self.unit = owner, name, total, unit
        self.done = 0
        self.started = owner.clock()
        self.last_beat = self.started

    def advance(self, n: float = 1) -> None:
        self.done += n
        now = self.owner.clock()
        if now - self.last_beat >= self.owner.heartbeat_s:
            self.last_beat = now
            self.owner.say(f"  {self.name} {self._count()}{self._eta(now)}")

    def grow(self, n: int) -> None:
        self.total = (self.total or 0) + n

    def _count(self) -> str:
        of = f"/{self.total}" if self.total else ""
        return f"{int(self.done)}{of} {self.unit}".rstrip()

    def _eta(self, now: float) -> str:
        if not self.total or not self.done or self.done >= self.total:
            return ""
        rate = (now - self.started) / self.done
        return f", about {rate * (self.total - self.done):.0f}s left"


class LineProgress:
    """One unwrapped line per event on ``stream`` (stderr by default), timed from the start."""

    def __init__(self, stream: IO[str] | None = None, *, heartbeat_s: float = 10.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.stream = stream
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.started = clock()

    def say(self, message: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(f"{self.clock() - self.started:.1f}s {_plain(message)}\n")
        stream.flush()

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "") -> Iterator[_LineStage]:
        stage = _LineStage(self, name, total, unit)
        self.say(name)
        yield stage
        self.say(f"{name} done in {self.clock() - stage.started:.1f}s")

    @contextlib.contextmanager
    def passages(self, total: int | None) -> Iterator[_LineStage]:
        yield _LineStage(self, "passages", total, "")


class RichProgress:
    """rich bars on a terminal: the passages of a stream, and the current stage with its ETA."""

    def __init__(self, console=None) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = console or Console(stderr=True, highlight=False)
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        self.started = time.perf_counter()

    def say(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[dim]{time.perf_counter() - self.started:6.1f}s[/dim] {escape(_plain(message))}")

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "") -> Iterator["_RichTask"]:
        with self._live():
            from rich.markup import escape

            task = self.bars.add_task(escape(_plain(name)), total=total)
            started = time.perf_counter()
            try:
                yield _RichTask(self.bars, task)
            finally:
                self.bars.remove_task(task)
            self.say(f"{name} done in {time.perf_counter() - started:.1f}s")

    @contextlib.contextmanager
    def passages(self, total: int | None) -> Iterator["_RichTask"]:
        with self._live():
            task = self.bars.add_task("passages", total=total)
            try:
                yield _RichTask(self.bars, task)
            finally:
                self.bars.remove_task(task)

    @contextlib.contextmanager
    def _live(self) -> Iterator[None]:
        # Nested stages share one live display; the outermost user starts and stops it.
        if self.bars.live.is_started:
            yield
            return
        self.bars.start()
        try:
            yield
        finally:
            self.bars.stop()


class _RichTask:
    def __init__(self, bars, task) -> None:
        self.bars, self.task = bars, task

    def advance(self, n: float = 1) -> None:
        self.bars.advance(self.task, n)

    def grow(self, n: int) -> None:
        total = self.bars.tasks[[t.id for t in self.bars.tasks].index(self.task)].total or 0
        self.bars.update(self.task, total=total + n)


def _plain(message: str) -> str:
    """One line: a log line is never wrapped or split."""
    return " ".join(str(message).split())


def default_progress(quiet: bool = False) -> Progress:
    """Bars when stderr is a terminal, lines otherwise, nothing with ``quiet``."""
    if quiet:
        return QuietProgress()
    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return RichProgress()
    return LineProgress()


__all__ = ["Progress", "Stage", "LineProgress", "RichProgress", "QuietProgress", "default_progress"]
