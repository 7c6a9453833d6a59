"""The daemon's loop, hosted by APScheduler 3.11's AsyncIOScheduler (DESIGN §5).

APScheduler starts one long-lived loop job (``misfire_grace_time=None``: a start-up stall cannot skip it) that
sleeps until the earliest of: the tick, the next ``next_run_at``, or a ``NOTIFY batcher_wakeup`` / a freed
slot. Each pass brings derived jobs up to date (:mod:`batcher.derived`), materializes due occurrences, reaps
runs of dead workers, and claims up to the free slots of the concurrency semaphore, dispatching each claimed
run to a :class:`~batcher.runner.RunExecution` task. The loop cannot be lost: an error in a pass is logged
(``tick_failed``) and the next pass runs; a supervisor restarts the loop if it ever ends while not draining
(``scheduler_loop_restarted``); ``loop_healthy`` tells /healthz and the systemd watchdog when it is dead or
stuck in a pass. ``drain()`` implements the shutdown of
DESIGN §5: stop claiming, let runs finish within the grace, then ask them to stop at their next batch
boundary, and 5 s later cancel them (their final commit is shielded). A claim in flight when the drain begins
finishes first (the claim lock), so the drain sees every run this worker claimed.
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from batcher.derived import DerivedJobs
from batcher.maintenance import run_maintenance
from batcher.materialize import materialize_due, seconds_until_next_due
from batcher.models import Services
from batcher.recovery import prune_workers, reap_abandoned
from batcher.runner import SHIELD_FINISH_TIMEOUT, RunExecution
from batcher.shutdown import cancel_and_wait
from batcher.store import DB_ERRORS, Q, UniqueViolation
from batcher.worker import Worker

log = structlog.get_logger("batcher.scheduler")
HARD_CANCEL_AFTER = 5.0
PRUNE_EVERY = 60.0


class Scheduler:
    """Claims and runs due work for one worker until drained."""

    def __init__(self, services: Services, worker: Worker) -> None:
        daemon = services.settings.daemon
        self.services = services
        self.worker = worker
        self.concurrency = daemon.concurrency
        self.queues = list(daemon.queues) if daemon.queues else None
        self.tick_seconds = daemon.tick_seconds
        self.lease = daemon.lease_seconds
        self.aging = daemon.aging_per_minute
        self.running: dict[int, tuple[asyncio.Task[dict[str, Any]], RunExecution]] = {}
        self.ticks = 0
        self.last_tick = time.monotonic()  # when the last full pass began (/healthz)
        self.loop_running = False
        self._pass_started: float | None = None  # the pass in progress began then (None: waiting)
        self._claim_lock = asyncio.Lock()  # held by a claim until it dispatched; taken for good by drain
        self._supervisor: asyncio.Task[Any] | None = None
        self._wake = asyncio.Event()
        self._draining = False
        self._stopped = asyncio.Event()
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._last_prune = 0.0
        self._slot_freed = False  # a run ended since the last pass: its slot can be refilled by a claim alone
        self.derived = DerivedJobs(services.registry)
        worker.owner = self

    def active_runs(self) -> list[int]:
        return [run_id for run_id, (_, execution) in self.running.items() if not execution.state.final_committed]

    def wakeup(self) -> None:
        self._wake.set()

    def cancel_run(self, run_id: int, reason: str) -> None:
        if run_id in self.running:
            self.running[run_id][1].request_cancel(reason)

    def fence_all(self) -> None:
        for _, execution in self.running.values():
            execution.request_cancel("lease_lost")

    async def start(self) -> None:
        self._aps.start()
        self._aps.add_job(self._supervise, id="batcher-loop", name="batcher loop", max_instances=1,
                          next_run_time=datetime.now(UTC), misfire_grace_time=None)
        self._aps.add_job(self.maintenance, CronTrigger(hour=3, minute=17, timezone=UTC), id="batcher-maintenance",
                          name="daily maintenance", max_instances=1, coalesce=True, misfire_grace_time=3600)

    async def maintenance(self) -> None:
        """The daily retention run (see :mod:`batcher.maintenance`)."""
        try:
            await run_maintenance(self.services.pool, self.services.settings.daemon.runs_retention_days)
        except DB_ERRORS as exc:
            log.warning("maintenance_failed", error=f"{type(exc).__name__}: {exc}")

    def loop_healthy(self, bound: float) -> bool:
        """The loop runs and is not stuck: no pass in progress for longer than ``bound`` seconds (a loop
        waiting for its next pass is healthy; a dead one is not)."""
        started = self._pass_started
        return self.loop_running and (started is None or time.monotonic() - started <= bound)

    async def _supervise(self) -> None:
        """Run the loop until drained; if it ever ends otherwise, log it and start it again."""
        self._supervisor = asyncio.current_task()
        try:
            while not self._draining:
                try:
                    await self._loop()
                except Exception as exc:  # noqa: BLE001 - the loop must outlive any bug in it
                    log.error("scheduler_loop_crashed", error=f"{type(exc).__name__}: {exc}")
                if not self._draining:
                    log.error("scheduler_loop_restarted")
                    await asyncio.sleep(min(self.tick_seconds, 1.0))
        finally:
            self._stopped.set()

    async def _loop(self) -> None:
        due_at = 0.0  # monotonic time of the next full pass
        self.loop_running = True
        try:
            while not self._draining:
                self._wake.clear()
                self._pass_started = time.monotonic()
                due_at = await self._pass(due_at)
                self._pass_started = None
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(due_at - time.monotonic(), 0.01))
                except TimeoutError:
                    pass
        finally:
            self.loop_running = False
            self._pass_started = None

    async def _pass(self, due_at: float) -> float:
        """One pass (a claim alone when a run ended before the next full pass is due); any error is logged
        and the loop goes on. Returns when the next full pass is due."""
        try:
            if self._slot_freed and time.monotonic() < due_at:
                self._slot_freed = False
                await self.claim()  # a run ended: fill its slot, no full pass needed
                return due_at
            self._slot_freed = False
            due_in = await self.tick()
            wait = self.tick_seconds if due_in is None else min(self.tick_seconds, due_in)
            return time.monotonic() + max(wait, 0.01)
        except DB_ERRORS as exc:
            log.warning("tick_failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug in one pass must not end scheduling
            log.error("tick_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
        return time.monotonic() + self.tick_seconds

    async def tick(self) -> float | None:
        """One pass: materialize, reap, claim. Returns seconds until the next due occurrence."""
        self.ticks += 1
        self.last_tick = time.monotonic()
        pool = self.services.pool
        await self.derived.sync(pool)
        await materialize_due(pool)
        await reap_abandoned(pool)
        if time.monotonic() - self._last_prune > PRUNE_EVERY:
            self._last_prune = time.monotonic()
            await prune_workers(pool, 10 * self.lease)
        await self.claim()
        return await seconds_until_next_due(pool)

    async def claim(self) -> int:
        if self._draining:
            return 0  # (drain keeps the claim lock: never wait for it)
        async with self._claim_lock:  # drain waits for this: what we claim is dispatched before it lists
            free = self.concurrency - len(self.running)
            if free <= 0 or self._draining or self.worker.fenced or not self.worker.holds_lock:
                return 0
            try:
                rows = await self.services.pool.fetch(Q["claim_runs"], self.worker.worker_id, free, self.lease,
                                                      self.queues, self.aging)
            except UniqueViolation:
                return 0  # another worker claimed the same job between our snapshot and our lock
            for row in rows:
                self._dispatch(dict(row))
            return len(rows)

    def _dispatch(self, run: dict[str, Any]) -> None:
        execution = RunExecution(self.services, run, lease_seconds=self.lease)
        task = asyncio.create_task(execution.execute(), name=f"run {run['id']} {run['job_name']}")
        self.running[run["id"]] = (task, execution)
        task.add_done_callback(functools.partial(self._done, run["id"]))

    def _done(self, run_id: int, task: asyncio.Task[dict[str, Any]]) -> None:
        self.running.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("run_task_crashed", run_id=run_id, error=repr(task.exception()))
        self._slot_freed = True
        self._wake.set()

    async def drain(self, grace: float) -> None:
        """Stop claiming; wait up to ``grace`` s; then cancel at batch boundaries; 5 s later, hard cancel.
        Every run claimed before (a claim in flight included) has ended when it returns."""
        self._draining = True
        self.wakeup()
        began = time.monotonic()
        await self._settle_claims(HARD_CANCEL_AFTER)
        grace = max(grace - (time.monotonic() - began), 0.0)  # the wait for a claim counts against the grace
        tasks = [t for t, _ in self.running.values()]
        log.info("drain_started", running=len(tasks), grace_seconds=grace)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task, execution in list(self.running.values()):
            if not task.done():
                execution.request_cancel("shutdown")
        pending = [t for t, _ in self.running.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=HARD_CANCEL_AFTER)
        # a cancelled run still records its end (shielded, bounded by SHIELD_FINISH_TIMEOUT)
        await asyncio.gather(*[cancel_and_wait(t, SHIELD_FINISH_TIMEOUT + 5, again_every=None)
                               for t, _ in list(self.running.values()) if not t.done()])
        await self._stop_loop()
        self._aps.shutdown(wait=False)
        log.info("drain_finished")

    async def _settle_claims(self, timeout: float) -> None:
        """Wait for a claim in flight to dispatch its runs, then keep the claim lock: no claim after this.
        A claim stuck longer than ``timeout`` is cancelled with the loop (its runs, if the database took
        them, are reaped once our lock is free; no handler of theirs ever started)."""
        try:
            await asyncio.wait_for(self._claim_lock.acquire(), timeout)
        except TimeoutError:
            log.warning("drain_claim_stuck", seconds=timeout)
            await self._stop_loop(0.0)
            await self._claim_lock.acquire()

    async def _stop_loop(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._stopped.wait(), self.tick_seconds + 5 if timeout is None else timeout)
        except TimeoutError:
            if self._supervisor is not None:
                await cancel_and_wait(self._supervisor, HARD_CANCEL_AFTER)
