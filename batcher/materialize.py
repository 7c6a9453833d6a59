"""Materialize due occurrences into queued runs (DESIGN §5), one transaction per tick.

For each enabled, unpaused job whose ``next_run_at`` has come: missed occurrences collapse into one run
of the latest plus one ``skipped``/``missed`` row (count, first, last); with ``misfire_grace_seconds`` > 0
a latest occurrence older than the grace is skipped too; overlap ``skip`` records an occurrence that finds
the job queued or running as ``skipped``/``overlap``, ``queue_one`` keeps one queued run behind the running
one. ``next_run_at`` advances to the first occurrence after the database's ``now()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog

from batcher.schedule import Schedule
from batcher.store import Q

log = structlog.get_logger("batcher.materialize")
MATERIALIZE_LIMIT = 1000


def schedule_of(job: Mapping[str, Any]) -> Schedule:
    return Schedule(job["interval_minutes"], job["cron"], job["timezone"], job["schedule_anchor"])


async def materialize_due(pool: Any, limit: int = MATERIALIZE_LIMIT) -> int:
    """Queue the due occurrences of every due job; returns how many jobs were handled."""
    async with pool.acquire() as conn, conn.transaction():
        jobs = await conn.fetch(Q["due_jobs"], limit)
        for job in jobs:
            await _materialize_job(conn, job)
    return len(jobs)


async def _materialize_job(conn: Any, job: Mapping[str, Any]) -> None:
    now: datetime = job["db_now"]
    schedule = schedule_of(job)
    occ = schedule.occurrences_until(job["next_run_at"], now)
    grace = float(job["misfire_grace_seconds"])
    run_latest = not (grace > 0 and (now - occ.latest).total_seconds() > grace)
    missed = occ.count - (1 if run_latest else 0)
    if missed > 0:
        last_missed = occ.previous if run_latest else occ.latest
        details = {"count": missed, "at_least": occ.capped, "first": job["next_run_at"].isoformat(),
                   "last": (last_missed or job["next_run_at"]).isoformat()}
        await conn.execute(Q["insert_skipped_run"], job["job_name"], job["job_type"], "schedule",
                           job["next_run_at"], "missed", {}, details)
        log.info("occurrences_missed", job=job["job_name"], **details)
    if run_latest:
        await _queue_occurrence(conn, job, occ.latest)
    nxt = schedule.next_after(max(now, occ.latest), occ.latest)
    await conn.execute(Q["set_next_run"], job["job_name"], nxt, occ.latest)


async def _queue_occurrence(conn: Any, job: Mapping[str, Any], at: datetime) -> None:
    busy = await conn.fetchrow(Q["job_busy"], job["job_name"])
    blocked = busy["queued"] > 0 if job["overlap"] == "queue_one" else (busy["queued"] + busy["running"]) > 0
    if blocked:
        await conn.execute(Q["insert_skipped_run"], job["job_name"], job["job_type"], "schedule", at,
                           "overlap", {}, {"queued": busy["queued"], "running": busy["running"]})
        return
    await conn.execute(Q["insert_scheduled_run"], job["job_name"], job["job_type"], at, job["priority"], {})


async def seconds_until_next_due(pool: Any) -> float | None:
    value = await pool.fetchval(Q["seconds_until_next_due"])
    return None if value is None else max(float(value), 0.0)
