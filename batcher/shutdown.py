"""Seeing a slow shutdown: which step of it is pending and what every task is waiting on.

A daemon that does not exit after SIGTERM is the worst kind of hang for an operator: systemd waits
``TimeoutStopSec`` and then kills it, and nothing says why. While the daemon stops, :class:`ShutdownMonitor`
logs ``shutdown_slow`` every ``every`` seconds with the step in progress (``draining``, ``closing``) and,
for each pending asyncio task, the chain of coroutines it is suspended in (innermost last), so the
next report of a stuck stop names the await that did not return.
"""

from __future__ import annotations

import asyncio
import time
from types import CoroutineType, GeneratorType
from typing import Any

import structlog

log = structlog.get_logger("batcher.shutdown")

REPORT_EVERY = 5.0
MAX_TASKS = 20
MAX_DEPTH = 12


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """``qualname (file:line)`` of each coroutine the task is suspended in, outermost first."""
    chain: list[str] = []
    current: Any = task.get_coro()
    while current is not None and len(chain) < MAX_DEPTH:
        frame = getattr(current, "cr_frame", None) or getattr(current, "gi_frame", None) \
            or getattr(current, "ag_frame", None)
        if frame is None:
            break
        code = frame.f_code
        chain.append(f"{code.co_qualname} ({code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
        if isinstance(current, CoroutineType):
            current = current.cr_await
        elif isinstance(current, GeneratorType):
            current = current.gi_yieldfrom
        else:
            current = getattr(current, "ag_await", None)
    return chain


def pending_tasks(exclude: asyncio.Task[Any] | None = None) -> list[dict[str, Any]]:
    """The loop's unfinished tasks (but ``exclude``), each with its name and await chain."""
    tasks = [t for t in asyncio.all_tasks() if not t.done() and t is not exclude]
    tasks.sort(key=lambda t: t.get_name())
    return [{"task": t.get_name(), "awaiting": await_chain(t)} for t in tasks[:MAX_TASKS]]


class ShutdownMonitor:
    """Tracks the shutdown's current step and, while it lasts, reports it with every pending task."""

    def __init__(self, every: float = REPORT_EVERY) -> None:
        self.every = every
        self.step = "starting"
        self._began = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self, step: str) -> None:
        """The shutdown begins (idempotent): report from now on, every ``every`` seconds."""
        self.step = step
        if self._task is None:
            self._began = time.monotonic()
            self._task = asyncio.create_task(self._report(), name="batcher-shutdown-monitor")

    async def stop(self) -> None:
        """The shutdown is over (or never began)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task, self.every)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            log.warning("shutdown_slow", step=self.step, seconds=round(time.monotonic() - self._began, 1),
                        tasks=pending_tasks(exclude=asyncio.current_task()))


async def cancel_and_wait(task: asyncio.Task[Any], timeout: float, *, again_every: float | None = 1.0) -> bool:
    """Cancel ``task`` and wait up to ``timeout`` s for it to end, cancelling it again every ``again_every``
    s (None: once — for a task that finishes shielded work after a cancel, which a second cancel would
    interrupt): on Python 3.11 a cancellation that arrives as an awaited ``wait_for`` completes can be
    lost, and a task that lost it would otherwise be waited for forever. True when the task ended; else
    ``task_did_not_stop`` is logged with what the task awaits."""
    deadline = time.monotonic() + timeout
    task.cancel()
    while not task.done():
        left = deadline - time.monotonic()
        if left <= 0:
            log.error("task_did_not_stop", task=task.get_name(), awaiting=await_chain(task), seconds=timeout)
            return False
        await asyncio.wait({task}, timeout=left if again_every is None else min(again_every, left))
        if again_every is not None and not task.done():
            task.cancel()
    return True
