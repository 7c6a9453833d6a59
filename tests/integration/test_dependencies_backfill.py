"""Dependencies, backfill windows and retention against real PostgreSQL."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from batcher.commands import queue_backfill
from batcher.errors import ConfigError
from batcher.maintenance import run_maintenance
from batcher.registry import load_registry
from batcher.testing import run_job_once, test_services, test_settings

SYN = {"type": "synthetic", "interval_minutes": 60, "params": {"records": 20, "batch_size": 10}}


def _settings(database_url: str, redis_url: str, **jobs: Any) -> Any:
    return test_settings(database_url, redis_url, jobs=jobs)


async def _runs(pool: Any, job: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch("SELECT * FROM batch_runs WHERE job_name = $1 ORDER BY id", job)]


async def test_dependent_is_queued_in_the_transaction_of_the_last_needed_success(
        db: Any, database_url: str, redis_url: str) -> None:
    """C depends on A and B: A's success alone queues nothing; B's success queues exactly one C run
    (trigger dependency); A succeeding again does not queue a second C until B succeeds again too."""
    s = _settings(database_url, redis_url, a=SYN, b=SYN, c={"type": "synthetic", "depends_on": ["a", "b"]})
    await run_job_once(s, "a")
    assert await _runs(db, "c") == []
    await run_job_once(s, "b")
    runs = await _runs(db, "c")
    assert [(r["trigger"], r["status"]) for r in runs] == [("dependency", "queued")]
    await run_job_once(s, "a")
    assert len(await _runs(db, "c")) == 1
    assert await db.fetchval("SELECT next_run_at FROM batch_config WHERE job_name = 'c'") is None


async def test_dependent_is_skipped_when_an_upstream_fails_for_good(
        db: Any, database_url: str, redis_url: str) -> None:
    """A permanent failure of the upstream records the dependent skipped/upstream_failed with the
    upstream's run id."""
    broken = {**SYN, "params": {"records": 20, "batch_size": 10, "fail_at_batch": 1, "fail_mode": "permanent"}}
    s = _settings(database_url, redis_url, a=broken, c={"type": "synthetic", "depends_on": ["a"]})
    summary = await run_job_once(s, "a")
    assert summary["status"] == "failed"
    runs = await _runs(db, "c")
    assert [(r["status"], r["reason"]) for r in runs] == [("skipped", "upstream_failed")]
    assert runs[0]["result"]["upstream_run_id"] == summary["run_id"]


async def test_backfill_queues_one_window_per_day_with_run_scoped_checkpoints(
        db: Any, database_url: str, redis_url: str) -> None:
    """backfill of 3 days queues 3 backfill runs with start/end params; run through the runner, a
    job-scoped synthetic stream writes its cursor under the backfill run's own scope, so the job's
    incremental cursor ('' scope) never moves."""
    job = {**SYN, "params": {"records": 20, "batch_size": 10, "scope": "job"}}
    s = _settings(database_url, redis_url, inc=job)
    async with test_services(s, http=False) as svc:
        ids = await queue_backfill(svc.pool, svc.registry, "inc", date(2026, 1, 1), date(2026, 1, 3))
    assert len(ids) == 3
    runs = await _runs(db, "inc")
    assert [r["params"] for r in runs] == [{"start": f"2026-01-0{d}", "end": f"2026-01-0{d}"} for d in (1, 2, 3)]
    assert {r["trigger"] for r in runs} == {"backfill"}
    from batcher.runner import RunExecution
    from tests.inprocess import running_worker

    async with test_services(s, http=False) as svc, running_worker(svc, lease_seconds=10) as worker:
        from batcher.store import Q

        run = dict((await svc.pool.fetch(Q["claim_runs"], worker.worker_id, 1, 10.0, None, 1.0))[0])
        summary = await RunExecution(svc, run, lease_seconds=10).execute()
    assert summary["status"] == "succeeded" and summary["records"] == 20
    assert await db.fetchval("SELECT count(*) FROM checkpoints WHERE job_name = 'inc' AND scope_key = ''") == 0
    window = await db.fetchval("SELECT attrs->'window' FROM synthetic_records LIMIT 1")
    assert window == {"start": "2026-01-01", "end": "2026-01-01"}


@pytest.mark.parametrize("first, last, fragment", [
    (date(2026, 1, 5), date(2026, 1, 1), "before"),
    (date(2024, 1, 1), date(2026, 1, 1), "--yes"),
])
async def test_backfill_rejects_bad_ranges(db: Any, database_url: str, redis_url: str,
                                           first: date, last: date, fragment: str) -> None:
    """A reversed range, or more than 366 windows without confirmation, is a usage error."""
    s = _settings(database_url, redis_url, inc=SYN)
    async with test_services(s, http=False) as svc:
        with pytest.raises(ConfigError, match=fragment.replace("-", r"\-")):
            await queue_backfill(svc.pool, load_registry(), "inc", first, last)


async def test_retention_prunes_old_finished_runs_logs_and_resolved_dead_letters(
        db: Any, database_url: str, redis_url: str) -> None:
    """Maintenance deletes finished runs (and their logs) and resolved dead letters older than the
    retention, and keeps recent ones, queued runs, and unresolved dead letters."""
    s = _settings(database_url, redis_url, a=SYN)
    await run_job_once(s, "a")
    await run_job_once(s, "a")
    old = await db.fetchval("SELECT min(id) FROM batch_runs")
    await db.execute("UPDATE batch_runs SET finished_at = now() - interval '40 days' WHERE id = $1", old)
    await db.execute("INSERT INTO dead_letters (job_name, stream, origin, reason, payload, payload_hash, resolved_at)"
                     " VALUES ('a', 's', 'handler', 'r', '{}', 'h1', now() - interval '40 days'),"
                     "        ('a', 's', 'handler', 'r', '{}', 'h2', NULL)")
    result = await run_maintenance(db, 30)
    assert result == {"runs_pruned": 1, "dead_letters_pruned": 1, "checkpoints_pruned": 0, "retention_days": 30}
    assert await db.fetchval("SELECT count(*) FROM batch_runs") == 1
    assert await db.fetchval("SELECT count(*) FROM run_logs WHERE run_id = $1", old) == 0
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 1
