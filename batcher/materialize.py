"""Materialize due occurrences into queued runs (DESIGN §5), one transaction per tick.

For each enabled, unpaused job whose ``next_run_at`` has come: missed occurrences collapse into one run
of the latest plus one ``skipped``/``missed`` row (count, first, last); with ``misfire_grace_seconds`` > 0
a latest occurrence older than the grace is skipped too; overlap ``skip`` records an occurrence that finds
the job queued or running as ``skipped``/``overlap``, ``queue_one`` keeps one queued run behind the running
one. ``next_run_at`` advances to the first occurrence after the database's ``now()``.

Schedule computation is bounded per job (issue 14 #8: at most CRON_WALK_CAP steps of a cron walk), runs
in a thread for a cron job more than an hour behind, and a transaction stops taking jobs after
MATERIALIZE_BUDGET_SECONDS of it, so a long outage never blocks the event loop (heartbeats, watchdog).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from batcher.schedule import Occurrences, Schedule
from batcher.store import Q

log = structlog.get_logger("batcher.materialize")
MATERIALIZE_LIMIT = 1000
MATERIALIZE_BUDGET_SECONDS = 0.5  # schedule computation per transaction; the rest waits for the next tick
_INLINE_BACKLOG = timedelta(hours=1)  # a cron job further behind is computed off the event loop


def schedule_of(job: Mapping[str, Any]) -> Schedule:
    return Schedule(job["interval_minutes"], job["cron"], job["timezone"], job["schedule_anchor"],
                    job.get("every_weeks") or 1)


@dataclass(frozen=True)
class _Plan:
    occ: Occurrences
    next_run_at: datetime | None


def _plan(job: Mapping[str, Any]) -> _Plan:
    """The CPU part of materializing a job: its due occurrences and the next one after now (bounded, see
    :meth:`Schedule.occurrences_until`)."""
    now: datetime = job["db_now"]
    schedule = schedule_of(job)
    occ = schedule.occurrences_until(job["next_run_at"], now)
    return _Plan(occ, schedule.next_after(max(now, occ.latest), occ.latest))


async def _plan_off_loop(job: Mapping[str, Any]) -> _Plan:
    """Cron jobs far behind are computed in a thread so heartbeats and the API keep running."""
    if job["cron"] is not None and job["db_now"] - job["next_run_at"] > _INLINE_BACKLOG:
        return await asyncio.to_thread(_plan, job)
    return _plan(job)


async def materialize_due(pool: Any, limit: int = MATERIALIZE_LIMIT,
                          budget_seconds: float = MATERIALIZE_BUDGET_SECONDS) -> int:
    """Queue the due occurrences of due jobs; returns how many jobs were handled. Once ``budget_seconds``
    of schedule computation were spent, no further job is taken (they stay due, and the next tick comes
    at once), so one transaction holds its locks for a bounded time."""
    handled, spent = 0, 0.0
    async with pool.acquire() as conn, conn.transaction():
        for job in await conn.fetch(Q["due_jobs"], limit):
            if handled and spent >= budget_seconds:
                log.info("materialize_budget_spent", handled=handled, seconds=round(spent, 3))
                break
            started = time.monotonic()
            plan = await _plan_off_loop(job)
            spent += time.monotonic() - started
            await _materialize_job(conn, job, plan)
            handled += 1
    return handled


async def _materialize_job(conn: Any, job: Mapping[str, Any], plan: _Plan) -> None:
    now: datetime = job["db_now"]
    occ = plan.occ
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
    await conn.execute(Q["set_next_run"], job["job_name"], plan.next_run_at, occ.latest)


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
