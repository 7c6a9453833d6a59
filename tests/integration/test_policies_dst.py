"""DST through materialization, and ``batcher jobs JOB --next N`` (DESIGN §5, issue 6).

Materialization takes "now" from the database, so these tests run ``materialize_due`` on one connection
whose ``now()`` is a settable instant: a ``test_clock.now()`` function placed before ``pg_catalog`` in that
connection's ``search_path`` (every other connection keeps the real clock). The real SQL runs unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from batcher import store
from batcher.cli import main
from batcher.materialize import materialize_due

BERLIN_0230 = {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class ClockPool:
    """A pool stand-in with one connection whose ``now()`` is whatever :meth:`set` said."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self.conn

    async def set(self, at: datetime) -> None:
        await self.conn.execute(f"SELECT set_config('test_clock.now', '{at.isoformat()}', false)")


@pytest.fixture
async def clock(db: Any, database_url: str) -> AsyncIterator[ClockPool]:
    await db.execute("CREATE SCHEMA IF NOT EXISTS test_clock")
    await db.execute("CREATE OR REPLACE FUNCTION test_clock.now() RETURNS timestamptz LANGUAGE sql STABLE "
                     "AS $$ SELECT current_setting('test_clock.now')::timestamptz $$")
    conn = await store.connect(database_url)
    await conn.execute("SET search_path = test_clock, pg_catalog, public")
    try:
        yield ClockPool(conn)
    finally:
        await conn.close()


async def _add_job(pool: Any, name: str, next_run_at: datetime, **schedule: Any) -> None:
    await pool.execute(
        "INSERT INTO batch_config (job_name, job_type, interval_minutes, cron, timezone, schedule_anchor, "
        "next_run_at, source) VALUES ($1, 'synthetic', $2, $3, $4, $5, $5, 'api')",
        name, schedule.get("interval_minutes"), schedule.get("cron"), schedule.get("timezone", "UTC"), next_run_at)


async def _fire(clock: ClockPool, db: Any, name: str, at: datetime, *,
                queued_only: bool = True) -> tuple[list[datetime], datetime]:
    """Set the clock to ``at`` and materialize: (scheduled_for of the rows it created, new next_run_at);
    with ``queued_only`` every created row must be a queued run."""
    before = await db.fetchval("SELECT coalesce(max(id), 0) FROM batch_runs")
    await clock.set(at)
    await materialize_due(clock)
    rows = await db.fetch("SELECT scheduled_for, status FROM batch_runs WHERE job_name = $1 AND id > $2 ORDER BY id",
                          name, before)
    await db.execute("UPDATE batch_runs SET status = 'cancelled' WHERE status = 'queued'")  # no overlap skips
    assert not queued_only or all(r["status"] == "queued" for r in rows), [dict(r) for r in rows]
    return [r["scheduled_for"] for r in rows], await db.fetchval(
        "SELECT next_run_at FROM batch_config WHERE job_name = $1", name)


async def test_berlin_0230_fires_once_per_wall_clock_time_across_dst(db: Any, clock: ClockPool) -> None:
    """`30 2 * * *` Europe/Berlin through materialize: in spring the non-existent 02:30 runs at 03:30 CEST
    (01:30 UTC) once; in autumn the repeated 02:30 fires only the first time (00:30 UTC, CEST) and the
    clock reaching the second 02:30 (01:30 UTC, CET) materializes nothing; a three-day outage across the
    autumn change counts the repeated wall time once."""
    await _add_job(db, "spring", utc("2026-03-28T01:30:00"), **BERLIN_0230)
    spring = [("2026-03-28T01:30:00", "2026-03-29T01:30:00"),   # 02:30 CET → next: 03:30 CEST (gap)
              ("2026-03-29T01:30:00", "2026-03-30T00:30:00"),   # 03:30 CEST → next: 02:30 CEST
              ("2026-03-30T00:30:00", "2026-03-31T00:30:00")]
    for due, nxt in spring:
        assert await _fire(clock, db, "spring", utc(due) + timedelta(seconds=1)) == ([utc(due)], utc(nxt)), due

    await _add_job(db, "autumn", utc("2026-10-24T00:30:00"), **BERLIN_0230)
    autumn = [("2026-10-24T00:30:00", "2026-10-25T00:30:00"),   # 02:30 CEST
              ("2026-10-25T00:30:00", "2026-10-26T01:30:00")]   # first 02:30 (CEST); the CET one is skipped
    for due, nxt in autumn:
        assert await _fire(clock, db, "autumn", utc(due) + timedelta(seconds=1)) == ([utc(due)], utc(nxt)), due
    second_0230 = await _fire(clock, db, "autumn", utc("2026-10-25T01:30:01"))
    assert second_0230 == ([], utc("2026-10-26T01:30:00")), "the repeated 02:30 (CET) must not fire again"
    assert await _fire(clock, db, "autumn", utc("2026-10-26T01:30:01")) == (
        [utc("2026-10-26T01:30:00")], utc("2026-10-27T01:30:00"))

    await _add_job(db, "outage", utc("2026-10-24T00:30:00"), **BERLIN_0230)
    created, after = await _fire(clock, db, "outage", utc("2026-10-27T02:00:00"), queued_only=False)
    missed = await db.fetchval("SELECT result FROM batch_runs WHERE job_name = 'outage' AND reason = 'missed'")
    assert created == [utc("2026-10-24T00:30:00"), utc("2026-10-27T01:30:00")] and after == utc("2026-10-28T01:30:00")
    assert missed["count"] == 3, f"24th, 25th once, 26th missed; got {missed}"


async def test_interval_jobs_are_absolute_across_dst(db: Any, clock: ClockPool) -> None:
    """A 60-minute interval job fires every 3600 real seconds through both changes, whatever Berlin's
    wall clock does (autumn 02:00 CEST, 02:00 CET, 03:00 CET; spring 01:00 CET, 03:00 CEST, 04:00 CEST)."""
    for name, start in (("hourly-autumn", "2026-10-25T00:00:00"), ("hourly-spring", "2026-03-29T00:00:00")):
        await _add_job(db, name, utc(start), interval_minutes=60)
        at = utc(start)
        for _ in range(4):
            assert await _fire(clock, db, name, at + timedelta(seconds=1)) == ([at], at + timedelta(hours=1)), at
            at += timedelta(hours=1)


async def test_cron_with_hour_star_follows_real_time_across_dst(db: Any, clock: ClockPool) -> None:
    """`30 * * * *` Europe/Berlin is not a fixed-hour job: it fires every real hour through the autumn
    change (02:30 CEST and 02:30 CET both run) and the spring change (01:30 CET, then 03:30 CEST)."""
    for name, start in (("half-past-autumn", "2026-10-24T23:30:00"), ("half-past-spring", "2026-03-28T23:30:00")):
        await _add_job(db, name, utc(start), cron="30 * * * *", timezone="Europe/Berlin")
        at = utc(start)
        for _ in range(4):
            assert await _fire(clock, db, name, at + timedelta(seconds=1)) == ([at], at + timedelta(hours=1)), at
            at += timedelta(hours=1)


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Environment for the in-process CLI: the test services and a config file with no jobs."""
    config = tmp_path / "batcher.toml"
    config.write_text("")
    for key in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"BATCHER_DATABASE_URL": database_url, "BATCHER_REDIS_URL": redis_url,
                       "BATCHER_CONFIG": str(config), "BATCHER_DATA_DIR": str(tmp_path / "data"),
                       "BATCHER_LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(key, value)
    yield


async def test_jobs_next_prints_the_next_five_fire_times(db: Any, cli_env: None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`batcher jobs JOB --next 5` (in-process) prints the next 5 fire times: a Berlin 02:30 cron job across
    the autumn change (the repeated 02:30 once), and a 7-minute interval job 7 minutes apart."""
    await _add_job(db, "cron-berlin", utc("2026-10-23T00:30:00"), **BERLIN_0230)
    await _add_job(db, "every-7", utc("2026-11-01T10:00:00"), interval_minutes=7)
    outputs = {}
    for name in ("cron-berlin", "every-7"):
        code = await asyncio.to_thread(main, ["jobs", name, "--next", "5"])
        out = capsys.readouterr().out.split()
        assert code == 0, out
        outputs[name] = [datetime.fromisoformat(t) for t in out]
    assert outputs["cron-berlin"] == [utc(t) for t in (
        "2026-10-23T00:30:00", "2026-10-24T00:30:00", "2026-10-25T00:30:00",
        "2026-10-26T01:30:00", "2026-10-27T01:30:00")]
    assert outputs["every-7"] == [utc("2026-11-01T10:00:00") + timedelta(minutes=7 * k) for k in range(5)]
