"""Issue 14, defects 1, 3 and 7 in process: lost leases are cancelled by the heartbeat, the heartbeat task
cannot die, drain sees a claim in flight, and the scheduling loop survives any error."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from batcher.api import create_app
from batcher.models import Services
from batcher.scheduler import Scheduler
from batcher.store import Q
from batcher.systemd import Notifier
from batcher.worker import Worker
from tests import inprocess
from tests.integration.test_policies import services_for
from tests.polling import wait_for

SLEEPY = {"type": "synthetic", "interval_minutes": 1440,
          "params": {"records": 10, "batch_size": 5, "delay_ms": 60_000}}
QUICK = {"type": "synthetic", "interval_minutes": 1440, "params": {"records": 5}}


def daemon(services: Services, prepare: Callable[[Scheduler], None] | None = None,
           ) -> contextlib.AbstractAsyncContextManager[Scheduler]:
    """An in-process daemon with a short lease (heartbeat each second), drained and stopped at exit."""
    return inprocess.daemon(services, lease_seconds=3.0, drain_seconds=0.5, prepare=prepare)


async def _a_due_run_succeeds(pool: Any) -> None:
    await wait_for(lambda: pool.fetchval("SELECT count(*) FROM batch_runs WHERE status = 'succeeded'"),
                   what="the due run succeeded")


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
        await wait_for(lambda: run_id not in sched.running, timeout=8,
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
        async with inprocess.running_worker(svc, lease_seconds=3.0) as worker:
            first = worker._task
            assert first is not None
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await wait_for(lambda: worker._task is not first, what="a new heartbeat task")
            await _heartbeats(svc.pool, worker, 1)
        assert worker._task is not None and worker._task.done()


class _GatedPool:
    """The pool, except that a claim_runs fetch that claimed something waits for ``release`` after the
    database answered (a claim in flight)."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.claimed = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        rows = await self._pool.fetch(query, *args, **kwargs)
        if query == Q["claim_runs"] and rows and not self.release.is_set():
            self.claimed.set()
            await self.release.wait()
        return rows


async def test_drain_sees_a_run_claimed_while_it_begins(db: Any, database_url: str, redis_url: str) -> None:
    """Defect 3: a claim in flight (committed in the database, not yet dispatched) when drain() begins is
    waited for; its run is drained — it ends cancelled/shutdown with a retry queued — before drain returns
    and the worker stops (never a handler running after its lock is released)."""
    async with services_for(database_url, redis_url, {"sleepy": SLEEPY}) as svc:
        gated = _GatedPool(svc.pool)
        worker = Worker(svc.database_url, svc.pool, lease_seconds=3.0, queues=None)
        await worker.start()
        sched = Scheduler(dataclasses.replace(svc, pool=gated), worker)
        await sched.start()
        try:
            await svc.pool.execute("UPDATE batch_config SET next_run_at = now()")
            await asyncio.wait_for(gated.claimed.wait(), 20)
            drain = asyncio.create_task(sched.drain(0.2))
            await asyncio.sleep(0)  # one step of the drain: it has begun (and, unfixed, listed its runs)
            gated.release.set()
            await asyncio.wait_for(drain, 20)
            left = dict(sched.running)
        finally:
            gated.release.set()
            for task, _ in sched.running.values():
                task.cancel()
            await worker.stop()
        rows = await svc.pool.fetch("SELECT status, reason, trigger FROM batch_runs "
                                    "WHERE status <> 'skipped' ORDER BY id")
        assert not left
        assert [tuple(r) for r in rows] == [("cancelled", "shutdown", "schedule"), ("queued", None, "retry")]


async def test_error_in_a_pass_does_not_stop_scheduling(db: Any, database_url: str, redis_url: str) -> None:
    """Defect 7: an exception that is not a database error in one pass is logged (tick_failed) and the
    loop goes on: the due job is still claimed and succeeds."""
    async with services_for(database_url, redis_url, {"quick": QUICK}) as svc:
        calls: list[int] = []

        def with_a_bug(sched: Scheduler) -> None:
            real_tick = sched.tick

            async def tick_with_a_bug() -> float | None:
                calls.append(1)
                if len(calls) == 1:
                    raise RuntimeError("a bug in one pass")
                return await real_tick()

            sched.tick = tick_with_a_bug  # type: ignore[method-assign]

        async with daemon(svc, prepare=with_a_bug):
            await _a_due_run_succeeds(svc.pool)
        assert len(calls) > 1


async def test_start_up_stall_does_not_skip_the_scheduling_loop(db: Any, database_url: str,
                                                                 redis_url: str) -> None:
    """Defect 7: the event loop blocked for 1.5 s right after start() (a slow start-up; APScheduler's
    default misfire grace is 1 s) does not skip the loop job for good: the due job still runs."""
    async with services_for(database_url, redis_url, {"quick": QUICK}) as svc, daemon(svc):
        time.sleep(1.5)  # noqa: ASYNC251 - the stall itself (it blocks the event loop), not a wait for something
        await _a_due_run_succeeds(svc.pool)


async def test_scheduling_loop_that_ends_is_restarted(db: Any, database_url: str, redis_url: str) -> None:
    """Defect 7: if the loop ever returns while the daemon is not draining, its supervisor starts it
    again (scheduler_loop_restarted): the due job is still claimed and succeeds."""
    async with services_for(database_url, redis_url, {"quick": QUICK}) as svc:
        calls: list[int] = []

        def ending_once(sched: Scheduler) -> None:
            real_loop = sched._loop

            async def loop_that_ends_once() -> None:
                calls.append(1)
                if len(calls) > 1:
                    await real_loop()

            sched._loop = loop_that_ends_once  # type: ignore[method-assign]

        async with daemon(svc, prepare=ending_once):
            await _a_due_run_succeeds(svc.pool)


async def test_healthz_and_watchdog_see_a_dead_or_stuck_loop(db: Any, database_url: str, redis_url: str,
                                                             tmp_path: Path) -> None:
    """Defect 7: while the loop runs, /healthz is 200 and the watchdog sends WATCHDOG=1; once the loop is
    dead (its task gone) /healthz is 503 at once — its last tick is still recent — and no WATCHDOG=1 is
    sent; a loop stuck inside a pass longer than the bound is unhealthy too."""
    from batcher.app import watchdog_beat

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    notifier = Notifier(path, "200000")
    async with services_for(database_url, redis_url, {}) as svc:
        try:
            async with inprocess.daemon(svc, lease_seconds=3.0, drain_seconds=0.2) as sched:
                client = TestClient(TestServer(create_app(svc, sched, stall_after=30.0), host="127.0.0.1"))
                await client.start_server()
                try:
                    await wait_for(lambda: sched.ticks > 0, what="a tick")
                    assert (await client.get("/healthz")).status == 200
                    assert watchdog_beat(notifier, sched) and sock.recv(100) == b"WATCHDOG=1"
                    assert sched._supervisor is not None
                    sched._supervisor.cancel()
                    await asyncio.gather(sched._supervisor, return_exceptions=True)
                    body = await (await client.get("/healthz")).json()
                    assert body["alive"] is False and body["secondsSinceTick"] < 30
                    assert not watchdog_beat(notifier, sched)
                    sched.loop_running, sched._pass_started = True, time.monotonic() - 100  # a pass stuck 100 s
                    assert not sched.loop_healthy(30.0) and not watchdog_beat(notifier, sched)
                    with pytest.raises(BlockingIOError):
                        sock.recv(100)  # nothing was sent since the loop died
                finally:
                    await client.close()
        finally:
            sock.close()


async def test_run_whose_final_status_committed_is_not_reported_lost(db: Any, database_url: str, redis_url: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose final status is committed but whose task has not returned yet (here: held after its
    finish; in production, returning its connection to the pool) is over, not lost: heartbeats in that
    window neither cancel it with lease_lost nor log run_lease_lost (they did: its row was no longer
    ``running`` while the scheduler still listed it)."""
    from batcher.runner import RunExecution

    held = asyncio.Event()
    release = asyncio.Event()
    original = RunExecution._finish

    async def finish_then_hold(self: RunExecution, outcome: Any) -> dict[str, Any]:
        summary = await original(self, outcome)
        held.set()
        await release.wait()
        return summary

    monkeypatch.setattr(RunExecution, "_finish", finish_then_hold)
    async with services_for(database_url, redis_url, {"quick": QUICK}) as svc, daemon(svc) as sched:
        with capture_logs() as logs:
            await svc.pool.execute("UPDATE batch_config SET next_run_at = now()")
            await asyncio.wait_for(held.wait(), 10)
            run_id = next(iter(sched.running))
            await _heartbeats(svc.pool, sched.worker, 2)
            execution = sched.running[run_id][1]
            release.set()
        assert execution.state.cancel_reason is None
        assert not [e for e in logs if e.get("event") == "run_lease_lost"]
        assert await svc.pool.fetchval("SELECT status FROM batch_runs WHERE id = $1", run_id) == "succeeded"
