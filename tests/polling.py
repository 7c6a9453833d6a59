"""Waiting for a condition with a deadline (tests never sleep a fixed time to wait for something).

- :func:`wait_for` (async code) and :func:`wait_for_sync` (synchronous code: threads, sync tests and
  fixtures) call a predicate until it returns a truthy value, which they return, and fail with an
  ``AssertionError`` naming ``what`` after ``timeout`` seconds, followed by ``details()`` when given
  (e.g. a process's log tail, the last answer seen). A predicate may raise to fail at once (e.g.
  :func:`exited_early` when the process being waited on died).
- :func:`query_until` polls a query's first value.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

Details = Callable[[], str] | None


def _timed_out(what: str, timeout: float, details: Details) -> AssertionError:
    return AssertionError(f"{what} not met within {timeout} s" + (f":\n{details()}" if details else ""))


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02,
                   what: str = "condition", details: Details = None) -> Any:
    """Poll a predicate (sync, or returning an awaitable) until it returns a truthy value (returned); fail
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, details)
        await asyncio.sleep(interval)


def wait_for_sync(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02,
                  what: str = "condition", details: Details = None) -> Any:
    """:func:`wait_for` for synchronous code: blocks the calling thread between checks."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, details)
        time.sleep(interval)


async def query_until(pool: Any, sql: str, *args: Any, timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll ``pool.fetchval(sql, *args)`` until it is truthy (returned); fail naming the query."""
    return await wait_for(lambda: pool.fetchval(sql, *args), timeout, interval, what=f"{sql} {args or ''}".strip())


def exited_early(returncode: int | None, what: str, log: Callable[[], str] | None = None) -> None:
    """Raise (ending a wait at once) when the process being waited on has exited (``returncode`` set)."""
    if returncode is not None:
        tail = f":\n{log()}" if log is not None else ""
        raise AssertionError(f"process exited ({returncode}) before {what}{tail}")
