"""Issue 14, defect 8, through ``materialize_due``: cron jobs far behind do not block the event loop.

A year-behind ``* 0-23 * * *`` Europe/Berlin job used to walk ~6 ms per missed minute inside the
materialize transaction, on the event loop: heartbeats stopped, the watchdog killed the daemon, the
transaction rolled back and the next start repeated it. These tests use the real SQL with a settable
database clock (see test_policies_dst.py).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from batcher.materialize import materialize_due
from tests.integration import test_policies_dst
from tests.integration.test_policies_dst import ClockPool, _add_job

clock = test_policies_dst.clock  # the settable-database-clock fixture

NOW = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
LATEST = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def _rows(db: Any, name: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch(
        "SELECT status, reason, scheduled_for, result FROM batch_runs WHERE job_name = $1 ORDER BY id", name)]


async def test_materialize_of_a_year_behind_berlin_minute_cron_is_bounded_and_keeps_the_loop_running(
        db: Any, clock: ClockPool) -> None:
    """A ``* 0-23 * * *`` Europe/Berlin job a year behind materializes in under 2 s of CPU into one queued
    run of the latest minute (12:00Z) and one skipped/missed row counting "at least" 9,999 (the walk's
    cap), next_run_at 12:01Z; while it computes, the event loop keeps running (no gap over 0.25 s)."""
    await _add_job(db, "far", NOW - timedelta(days=365), cron="* 0-23 * * *", timezone="Europe/Berlin")
    await clock.set(NOW)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)  # the behaviour under test: how late the loop wakes this ticker
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    task = asyncio.create_task(ticker())
    started = time.process_time()
    try:
        assert await materialize_due(clock) == 1
    finally:
        done.set()
        await task
    assert time.process_time() - started < 2.0
    assert max(gaps, default=0.0) < 0.25, f"the event loop was blocked for {max(gaps):.2f} s"
    rows = await _rows(db, "far")
    assert [(r["status"], r["reason"]) for r in rows] == [("skipped", "missed"), ("queued", None)]
    assert rows[0]["result"]["at_least"] is True and rows[0]["result"]["count"] == 9_999
    assert rows[0]["result"]["last"] == (LATEST - timedelta(minutes=1)).isoformat()
    assert rows[1]["scheduled_for"] == LATEST
    assert await db.fetchval("SELECT next_run_at FROM batch_config WHERE job_name = 'far'") == \
        LATEST + timedelta(minutes=1)


async def test_materialize_stops_taking_jobs_once_its_computation_budget_is_spent(
        db: Any, clock: ClockPool) -> None:
    """With the schedule-computation budget spent, one transaction takes no further jobs (they stay due
    for the next tick, which comes at once): three far-behind jobs with a zero budget take three calls,
    one job each, and each ends with its latest occurrence queued."""
    for name in ("a", "b", "c"):
        await _add_job(db, name, NOW - timedelta(days=30), cron="* 8-18 * * 1-5", timezone="Europe/Berlin")
    await clock.set(NOW)
    assert [await materialize_due(clock, budget_seconds=0.0) for _ in range(4)] == [1, 1, 1, 0]
    for name in ("a", "b", "c"):
        queued = [r for r in await _rows(db, name) if r["status"] == "queued"]
        assert [r["scheduled_for"] for r in queued] == [LATEST]
