"""Issue 14, defects 1, 3 and 7 in process: lost leases are cancelled by the heartbeat, the heartbeat task
cannot die, drain sees a claim in flight, and the scheduling loop survives any error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from batcher.models import Services
from batcher.scheduler import Scheduler
from batcher.worker import Worker
from tests.integration.test_policies import services_for
from tests.polling import wait_for

SLEEPY = {"type": "synthetic", "interval_minutes": 1440,
          "params": {"records": 10, "batch_size": 5, "delay_ms": 60_000}}


@contextlib.asynccontextmanager
async def daemon(services: Services, lease: float = 3.0) -> AsyncIterator[Scheduler]:
    """An in-process daemon with a short lease (heartbeat each second), drained and stopped at exit."""
    worker = Worker(services.database_url, services.pool, lease_seconds=lease, queues=None)
    await worker.start()
    scheduler = Scheduler(services, worker)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.drain(0.5)
        await worker.stop()


async def _running_id(pool: Any) -> int:
    value = await wait_for(lambda: pool.fetchval("SELECT id FROM batch_runs WHERE status = 'running'"),
                           what="a running run")
    return int(value)


async def _heartbeats(pool: Any, worker: Worker, count: int) -> None:
    """Wait until the worker row's heartbeat_at moved ``count`` times."""
    for _ in range(count):
        before = await pool.fetchval("SELECT heartbeat_at FROM workers WHERE worker_id = $1", worker.worker_id)
        await wait_for(lambda b=before: pool.fetchval(
            "SELECT heartbeat_at > $2 FROM workers WHERE worker_id = $1", worker.worker_id, b), what="a heartbeat")


async def test_run_whose_lease_was_taken_is_cancelled_by_the_heartbeat(db: Any, database_url: str,
                                                                        redis_url: str) -> None:
    """Defect 1: a run that is no longer ours (another daemon's reaper recorded it failed/abandoned) is
    not renewed; the next heartbeat cancels it with lease_lost at once — not at its next batch fence,
    60 s away — and its row keeps the reaper's verdict."""
    async with services_for(database_url, redis_url, {"sleepy": SLEEPY}) as svc, daemon(svc) as sched:
        await svc.pool.execute("UPDATE batch_config SET next_run_at = now()")
        run_id = await _running_id(svc.pool)
        await svc.pool.execute("UPDATE batch_runs SET status = 'failed', reason = 'abandoned', "
                               "finished_at = now() WHERE id = $1", run_id)
        await wait_for(lambda: asyncio.sleep(0, run_id not in sched.running), timeout=8,
                       what="the lost run's handler stopped")
        row = await svc.pool.fetchrow("SELECT status, reason FROM batch_runs WHERE id = $1", run_id)
        assert (row["status"], row["reason"]) == ("failed", "abandoned")


async def test_run_locked_by_our_own_transaction_is_not_cancelled(db: Any, database_url: str,
                                                                  redis_url: str) -> None:
    """Defect 1 (its limit): a run whose row is locked (as our own long batch transaction would) is skipped
    by renew_leases but still ours, so two heartbeats later it is still running, not cancelled."""
    async with services_for(database_url, redis_url, {"sleepy": SLEEPY}) as svc, daemon(svc) as sched:
        await svc.pool.execute("UPDATE batch_config SET next_run_at = now()")
        run_id = await _running_id(svc.pool)
        async with svc.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM batch_runs WHERE id = $1 FOR UPDATE", run_id)
            await _heartbeats(svc.pool, sched.worker, 2)
        assert run_id in sched.running and sched.running[run_id][1].state.cancel_reason is None


async def test_heartbeat_task_that_ends_is_restarted(db: Any, database_url: str, redis_url: str) -> None:
    """Defect 1: the heartbeat task ending unexpectedly (here: cancelled from outside) is logged and
    started again, so the worker row keeps being renewed; only stop() ends it."""
    async with services_for(database_url, redis_url, {}) as svc:
        worker = Worker(svc.database_url, svc.pool, lease_seconds=3.0, queues=None)
        await worker.start()
        try:
            first = worker._task
            assert first is not None
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await wait_for(lambda: asyncio.sleep(0, worker._task is not first), what="a new heartbeat task")
            await _heartbeats(svc.pool, worker, 1)
        finally:
            await worker.stop()
        assert worker._task is not None and worker._task.done()
