"""Recovery of runs whose worker died or lost its lease (the reaper of DESIGN §5).

A run is abandoned when its lease expired or its worker's liveness lock is free (a ``kill -9`` frees it
within seconds). It ends ``failed``/``abandoned``; unless it belongs to a ``run-job`` chain (the next
``run-job`` of that job takes it over) a retry row is queued at once — no backoff, the job did nothing
wrong — that resumes from the chain's checkpoint. Abandons count against ``max_abandons``.

A run whose cancel was requested ends ``cancelled`` (reason: the request) instead: no retry, no
takeover, its dependents recorded as for any cancel — a cancel ends the chain wherever the run is.
Each abandon is its own transaction that locks the job rows first (``lock_job_family``), then the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from batcher.dependencies import on_upstream_failure
from batcher.runs import RunWriter
from batcher.store import Q
from batcher.worker import LOCK_CLASS

log = structlog.get_logger("batcher.recovery")


async def abandon_run(conn: Any, run: Mapping[str, Any], *, queue_retry: bool) -> int | None:
    """Mark one locked running run abandoned; queue its retry when allowed. Returns the retry's id.
    A requested cancel wins: the run ends cancelled and nothing is retried."""
    if run["cancel_requested"]:
        await _end_cancelled(conn, run)
        return None
    row = await conn.fetchrow(Q["mark_abandoned"], run["id"])
    if row is None:
        return None
    job = await conn.fetchrow(Q["get_job"], run["job_name"])
    abandons = int(run["abandons"]) + 1
    log.warning("run_abandoned", run_id=run["id"], job=run["job_name"], worker_id=run["worker_id"],
                abandons=abandons)
    if not queue_retry or job is None or abandons > int(job["max_abandons"]):
        if queue_retry:
            await on_upstream_failure(conn, run["job_name"], int(run["id"]), "abandoned")
        return None
    return await RunWriter.queue_retry(conn, run, delay=0.0, attempt=int(run["attempt"]), abandons=abandons)


async def _end_cancelled(conn: Any, run: Mapping[str, Any]) -> None:
    row = await conn.fetchrow(Q["mark_abandoned_cancelled"], run["id"])
    if row is None:
        return
    log.warning("run_cancelled_after_worker_died", run_id=run["id"], job=run["job_name"],
                worker_id=run["worker_id"], reason=row["reason"])
    await on_upstream_failure(conn, run["job_name"], int(run["id"]), row["reason"])


async def reap_abandoned(pool: Any) -> int:
    """Abandon every running run whose worker is gone; returns how many. One transaction per run, which
    locks the run's job rows before the run row (the lock order of ``lock_job_family``)."""
    candidates = await pool.fetch(Q["abandoned_runs"], LOCK_CLASS)
    reaped = 0
    for candidate in candidates:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["lock_job_family"], candidate["job_name"])
            run = await conn.fetchrow(Q["abandoned_run"], LOCK_CLASS, candidate["id"])
            if run is not None:
                await abandon_run(conn, run, queue_retry=run["root_trigger"] != "cli")
                reaped += 1
    return reaped


async def count_live_workers(pool: Any) -> int:
    """Workers whose liveness lock is held (at least 1: this process)."""
    return max(int(await pool.fetchval(Q["live_workers"], LOCK_CLASS) or 0), 1)


async def prune_workers(pool: Any, older_than_seconds: float) -> None:
    await pool.execute(Q["prune_dead_workers"], LOCK_CLASS, older_than_seconds)
