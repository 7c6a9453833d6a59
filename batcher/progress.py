"""Progress of a run followed by a foreground command (``run-job``, ``aggregate``, ``trigger --wait``).

On a terminal (stderr is a TTY) one live line — records, the handler's total when it reports one, rate,
elapsed — is redrawn in place about twice a second and cleared at the end. Otherwise (logs, JSON-log
mode) a ``run_progress`` event is logged every :data:`LOG_EVERY` seconds while the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import structlog

log = structlog.get_logger("batcher.progress")
DRAW_EVERY = 0.5
LOG_EVERY = 5.0

#: What a reader returns: the run's id, its job, and its progress (``records`` committed, ``total``).
Snapshot = tuple[int, str, Mapping[str, Any]]


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(run_id: int, job: str, progress: Mapping[str, Any], seconds: float) -> str:
    """``run 7 (nightly): 1,200 of 10,000 records · 41/s · 29s``."""
    records = int(progress.get("records") or 0)
    total = progress.get("total")
    of = f" of {int(total):,}" if isinstance(total, int) and not isinstance(total, bool) else ""
    rate = records / seconds if seconds > 0 else 0.0
    return f"run {run_id} ({job}): {records:,}{of} records · {rate:,.0f}/s · {_elapsed(seconds)}"


class Progress:
    """Shows a run's progress while the ``async with`` body runs; :meth:`watch` names what to read."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._read: Callable[[], Snapshot] | None = None
        self._since = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._drawn = False
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    def watch(self, read: Callable[[], Snapshot]) -> None:
        """Start showing what ``read`` returns (the run has started: elapsed time counts from now)."""
        self._read, self._since = read, time.monotonic()

    async def __aenter__(self) -> Progress:
        if self._tty:  # log lines on the same terminal first clear the progress line (redrawn next tick)
            self._handlers = [(h, h.setStream(_Clearing(self))) for h in logging.getLogger().handlers
                              if isinstance(h, logging.StreamHandler) and h.stream is self._stream]
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.clear()
        for handler, stream in self._handlers:
            handler.setStream(stream)

    def clear(self) -> None:
        """Erase the drawn line, if any."""
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False

    async def _loop(self) -> None:
        every = DRAW_EVERY if self._tty else LOG_EVERY
        while True:
            await asyncio.sleep(every)
            if self._read is None:
                continue
            run_id, job, progress = self._read()
            seconds = time.monotonic() - self._since
            if self._tty:
                self._stream.write("\r\x1b[K" + progress_line(run_id, job, progress, seconds))
                self._stream.flush()
                self._drawn = True
            else:
                records = int(progress.get("records") or 0)
                log.info("run_progress", run_id=run_id, job=job, records=records, total=progress.get("total"),
                         rate=round(records / seconds, 1) if seconds > 0 else 0.0, elapsed_s=round(seconds, 1))


class _Clearing:
    """The log handler's stream while a progress line is shown: clears the line before each write."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def write(self, text: str) -> int:
        self._progress.clear()
        return self._progress._stream.write(text)

    def flush(self) -> None:
        self._progress._stream.flush()


def watch_execution(progress: Progress) -> Callable[[Any], None]:
    """An ``on_start`` for :func:`batcher.runjob.run_foreground`: show the claimed execution's progress."""
    def start(execution: Any) -> None:
        run_id, job = int(execution.run["id"]), str(execution.run["job_name"])
        progress.watch(lambda: (run_id, job, execution.state.progress or {}))

    return start
