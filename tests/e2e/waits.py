"""Waiting on daemon subprocesses from async tests without blocking the event loop (a fake server or a
proxy served by that loop keeps answering while the test waits)."""

from __future__ import annotations

from typing import Any

from tests.e2e.procs import Proc
from tests.polling import exited_early, wait_for


async def wait_events(proc: Proc, name: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The first ``count`` log events called ``name``; fails when the process exits first or on timeout."""
    seen: list[dict[str, Any]] = []

    def enough() -> list[dict[str, Any]] | None:
        seen[:] = [e for e in proc.events() if e.get("event") == name]
        if len(seen) >= count:
            return seen[:count]
        exited_early(proc.popen.poll(), f"{count} × {name}", proc.tail)
        return None

    found: list[dict[str, Any]] = await wait_for(enough, timeout, 0.05, what=f"{count} × {name}",
                                                 details=lambda: f"{len(seen)} seen\n{proc.tail()}")
    return found


async def wait_exit(proc: Proc, timeout: float) -> int:
    """The process's exit status, polled without blocking the loop."""
    await wait_for(lambda: proc.popen.poll() is not None, timeout, 0.05, what="the process's exit",
                   details=proc.tail)
    return int(proc.popen.returncode)
