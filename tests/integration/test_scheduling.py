"""Scheduler core against real PostgreSQL: materialization, claims, fencing, the in-process daemon loop.

Schedules are driven by setting ``next_run_at`` in the database, never by waiting for minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from batcher.materialize import materialize_due
from batcher.models import Services
from batcher.runs import RunWriter
from batcher.testing import test_services, test_settings
from batcher.worker import Worker
from tests.inprocess import daemon, running_worker
from tests.polling import wait_for


def _jobs(**overrides: Any) -> dict[str, Any]:
    base = {"type": "synthetic", "interval_minutes": 1, "params": {"records": 50, "batch_size": 10}}
    return {"every-minute": {**base, **overrides}}


@pytest.fixture
async def services(db: Any, database_url: str, redis_url: str) -> AsyncIterator[Services]:
    settings = test_settings(database_url, redis_url, jobs=_jobs())
    async with test_services(settings, http=False) as svc:
        yield svc


async def _runs(pool: Any, job: str = "every-minute") -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch("SELECT * FROM batch_runs WHERE job_name = $1 ORDER BY id", job)]


async def test_missed_interval_occurrences_become_one_run_and_one_skipped_row(services: Services) -> None:
    """After downtime, 11 due interval occurrences become one queued run of the latest plus one
    skipped/missed row counting the other 10; a second tick queues nothing more; next_run_at moves on."""
    pool = services.pool
    await pool.execute("UPDATE batch_config SET next_run_at = now() - interval '10 minutes 30 seconds', "
                       "schedule_anchor = now() - interval '10 minutes 30 seconds'")
    await materialize_due(pool)
    await materialize_due(pool)
    runs = await _runs(pool)
    skipped = [r for r in runs if r["status"] == "skipped"]
    queued = [r for r in runs if r["status"] == "queued"]
    assert len(skipped) == 1 and len(queued) == 1, runs
    assert skipped[0]["reason"] == "missed" and skipped[0]["result"]["count"] == 10
    assert queued[0]["trigger"] == "schedule"
    nxt = await pool.fetchval("SELECT next_run_at - $1::timestamptz FROM batch_config", queued[0]["scheduled_for"])
    assert nxt.total_seconds() == 60


async def test_interval_miss_count_is_arithmetic_for_years_of_downtime(services: Services) -> None:
    """A one-minute job a year behind is materialized at once: ~525,600 missed, counted, not walked."""
    pool = services.pool
    await pool.execute("UPDATE batch_config SET next_run_at = now() - interval '365 days', "
                       "schedule_anchor = now() - interval '365 days'")
    started = time.monotonic()
    await materialize_due(pool)
    assert time.monotonic() - started < 5
    skipped = [r for r in await _runs(pool) if r["status"] == "skipped"]
    assert skipped[0]["result"]["count"] == 365 * 24 * 60


async def test_cron_occurrences_walk_and_queue_latest(db: Any, database_url: str, redis_url: str) -> None:
    """A */5 cron job one hour behind: one run for the latest occurrence, 12 recorded as missed."""
    settings = test_settings(database_url, redis_url, jobs={"cron5": {
        "type": "synthetic", "cron": "*/5 * * * *", "params": {"records": 5}}})
    async with test_services(settings, http=False) as svc:
        await svc.pool.execute(
            "UPDATE batch_config SET next_run_at = date_bin('5 minutes', now(), 'epoch') - interval '1 hour'")
        await materialize_due(svc.pool)
        runs = await _runs(svc.pool, "cron5")
        assert [r["status"] for r in runs] == ["skipped", "queued"]
        assert runs[0]["result"]["count"] == 12
        assert runs[1]["scheduled_for"].minute % 5 == 0


async def test_overlap_skip_records_the_occurrence(services: Services) -> None:
    """With overlap = skip, an occurrence that finds the job queued is recorded skipped/overlap."""
    pool = services.pool
    await pool.execute("UPDATE batch_config SET next_run_at = now()")
    await materialize_due(pool)
    await pool.execute("UPDATE batch_config SET next_run_at = now()")
    await materialize_due(pool)
    statuses = [(r["status"], r["reason"]) for r in await _runs(pool)]
    assert statuses == [("queued", None), ("skipped", "overlap")]


async def test_daemon_loop_runs_due_job_once_and_records_success(services: Services) -> None:
    """The in-process daemon materializes, claims and runs a due job: one succeeded run with all rows,
    last_success_at set, run logs written, and the run-scoped checkpoint removed after success."""
    pool = services.pool
    async with daemon(services, lease_seconds=10, drain_seconds=5):
        run = await wait_for(lambda: pool.fetchrow(
            "SELECT * FROM batch_runs WHERE status = 'succeeded'"))
    assert run["records"] == 50 and run["runtime_ms"] is not None
    assert await pool.fetchval("SELECT count(*) FROM synthetic_records WHERE scope_key = $1",
                               str(run["id"])) == 50
    assert await pool.fetchval("SELECT last_success_at IS NOT NULL FROM batch_config")
    assert await pool.fetchval("SELECT count(*) FROM checkpoints") == 0
    events = [r["event"] for r in await pool.fetch("SELECT event FROM run_logs WHERE run_id = $1", run["id"])]
    assert "run_started" in events and "run_finished" in events
    assert len([r for r in await _runs(pool) if r["status"] != "skipped"]) == 1


async def test_claim_takes_one_run_per_job_and_never_two_running(services: Services) -> None:
    """Two workers claiming concurrently never hold two running runs of one job."""
    pool = services.pool
    for _ in range(3):
        await pool.execute("INSERT INTO batch_runs (job_name, job_type, trigger, root_trigger) "
                           "VALUES ('every-minute', 'synthetic', 'manual', 'manual')")
    workers = [Worker(services.database_url, pool, lease_seconds=10, queues=None) for _ in range(2)]
    for w in workers:
        await w.start()
    try:
        from batcher.store import Q

        results = await asyncio.gather(*[
            pool.fetch(Q["claim_runs"], w.worker_id, 4, 10.0, None, 1.0) for w in workers],
            return_exceptions=True)
        claimed = [r for res in results if isinstance(res, list) for r in res]
        assert len(claimed) == 1
        assert await pool.fetchval("SELECT count(*) FROM batch_runs WHERE status = 'running'") == 1
    finally:
        for w in workers:
            await w.stop()


async def test_worker_whose_lease_was_taken_over_commits_nothing_more(services: Services) -> None:
    """Once the run's lease expired and the reaper gave it away, the old claim token's writes are fenced:
    commit_batch raises LeaseLostError and no row of that batch lands."""
    from batcher.context import RunState
    from batcher.errors import LeaseLostError
    from batcher.handler import Batch
    from batcher.recovery import reap_abandoned
    from batcher.store import Q
    from handlers.synthetic import SyntheticHandler

    pool = services.pool
    async with running_worker(services, lease_seconds=10) as worker:
        await pool.execute("INSERT INTO batch_runs (job_name, job_type, trigger, root_trigger) "
                           "VALUES ('every-minute', 'synthetic', 'manual', 'manual')")
        run = dict((await pool.fetch(Q["claim_runs"], worker.worker_id, 1, 10.0, None, 1.0))[0])
        await pool.execute("UPDATE batch_runs SET lease_expires_at = now() - interval '1 second'")
        assert await reap_abandoned(pool) == 1
        writer = RunWriter(pool, run, 10.0, RunState())
        batch = Batch(stream="run_ignore", records=[(str(run["id"]), 1, "x", 1, {})], checkpoint={"n": 1})
        with pytest.raises(LeaseLostError):
            await writer.commit_batch(SyntheticHandler.stream("run_ignore"), batch, run["id"])
        assert await pool.fetchval("SELECT count(*) FROM synthetic_records") == 0
        assert await pool.fetchval("SELECT count(*) FROM checkpoints") == 0
        statuses = sorted(r["status"] for r in await _runs(pool))
        assert statuses == ["failed", "queued"]  # abandoned + its retry
