"""Waiting on daemon subprocesses from async tests without blocking the event loop (a fake server or a
proxy served by that loop keeps answering while the test waits)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.e2e.procs import Proc


async def wait_events(proc: Proc, name: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The first ``count`` log events called ``name``; fails when the process exits first or on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in proc.events() if e.get("event") == name]
        if len(found) >= count:
            return found[:count]
        if proc.popen.poll() is not None:
            raise AssertionError(f"process exited ({proc.popen.returncode}) before {count} × {name}:\n"
                                 + proc.tail())
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} of {count} × {name} within {timeout} s:\n" + proc.tail())
        await asyncio.sleep(0.05)


async def wait_exit(proc: Proc, timeout: float) -> int:
    """The process's exit status, polled without blocking the loop."""
    deadline = time.monotonic() + timeout
    while (code := proc.popen.poll()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"still running after {timeout} s:\n{proc.tail()}")
        await asyncio.sleep(0.05)
    return code
