"""This process's identity as a worker: liveness lock, LISTEN, one heartbeat renewing all its leases.

A worker holds a session advisory lock (``pg_advisory_lock(LOCK_CLASS, lock_key)``) on its own dedicated
connection — never a pooled one, whose reset would drop it — and LISTENs for ``batcher_wakeup`` on the
same connection. When a worker dies (even ``kill -9``) PostgreSQL frees the lock within seconds, and any
other worker's reaper sees it. When the connection breaks, it reconnects, re-takes the lock, re-LISTENs
and asks the scheduler for a catch-up tick.

The heartbeat runs every third of the lease: it renews the leases of the runs this process is executing
(a row left ``running`` by a crashed task is not renewed, so it expires and is reaped) that are not locked
by a batch transaction (``FOR UPDATE SKIP LOCKED``), reports cancel requests, and — if it cannot
renew for a whole lease — self-fences (cancels its handlers). Only a broken liveness connection is
replaced: a failed or timed-out heartbeat query on the pool (each step bounded by a third of the lease)
is logged and retried, never closing the liveness connection. A run that was not renewed and is no
longer running under this worker (reaped by another daemon) is cancelled at once with ``lease_lost``.
The heartbeat task restarts itself if it ever ends before :meth:`Worker.stop`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
import uuid
from typing import Protocol

import asyncpg
import structlog

from batcher import __version__, store
from batcher.shutdown import cancel_and_wait
from batcher.store import Q

LOCK_CLASS = 0x42415443  # "BATC": advisory-lock namespace of worker liveness locks
WAKEUP_CHANNEL = "batcher_wakeup"
STOP_TIMEOUT = 10.0  # stop(): how long the heartbeat task may take to end once cancelled
log = structlog.get_logger("batcher.worker")


class WorkerOwner(Protocol):
    """What a worker reports to: the scheduler of a daemon, or a foreground run-job."""

    def wakeup(self) -> None:
        """A NOTIFY arrived or the connection came back: run a (catch-up) tick now."""

    def cancel_run(self, run_id: int, reason: str) -> None:
        """A cancel request for a run this process executes."""

    def fence_all(self) -> None:
        """Leases could not be renewed for a whole lease: stop every handler."""

    def active_runs(self) -> list[int]:
        """Ids of the runs this process is executing whose final status is not committed yet (only their
        leases are renewed, and only their loss is reported)."""


class _NoOwner:
    def wakeup(self) -> None:
        pass

    def cancel_run(self, run_id: int, reason: str) -> None:
        pass

    def fence_all(self) -> None:
        pass

    def active_runs(self) -> list[int]:
        return []


class Worker:
    """A worker's identity and liveness. ``start()`` before claiming; ``stop()`` after runs ended."""

    def __init__(self, database_url: str, pool: asyncpg.Pool, *, lease_seconds: float,
                 queues: tuple[str, ...] | None, kind: str = "daemon") -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lock_key = 0
        self._url = database_url
        self._pool = pool
        self.lease_seconds = lease_seconds
        self._queues = queues
        self.owner: WorkerOwner = _NoOwner()
        self._kind = kind
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._broken = asyncio.Event()
        self.last_renewed = time.monotonic()
        self.fenced = False
        self._stopping = False
        self._slow_since: float | None = None  # the liveness check has been timing out since then
        self._timeout = max(lease_seconds / 3, 0.2)  # each heartbeat step: pool acquire + query, SELECT 1

    async def start(self) -> None:
        await self._connect()
        self._start_heartbeat()
        log.info("worker_started", worker_id=self.worker_id, kind=self._kind, queues=self._queues)

    def _start_heartbeat(self) -> None:
        self._task = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat {self.worker_id}")
        self._task.add_done_callback(self._heartbeat_ended)

    def _heartbeat_ended(self, task: asyncio.Task[None]) -> None:
        """The heartbeat only ends through ``stop()``: anything else is logged and it is started again."""
        if self._stopping:
            return
        error = "cancelled" if task.cancelled() else repr(task.exception())
        log.error("heartbeat_restarted", worker_id=self.worker_id, error=error)
        self._start_heartbeat()

    async def stop(self) -> None:
        """Stop the heartbeat, delete the worker row, release the lock (call after runs ended)."""
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task, STOP_TIMEOUT)
        try:
            async with asyncio.timeout(self._timeout):
                await self._pool.execute(Q["delete_worker"], self.worker_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            pass  # the row is pruned with the dead workers once our lock is gone
        if self._conn is not None:
            await self._conn.close(timeout=5)
            self._conn = None

    async def _connect(self) -> None:
        conn = await store.connect(self._url)
        while True:
            key = secrets.randbelow(2**31 - 1) + 1 if not self.lock_key else self.lock_key
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, key):
                break
            self.lock_key = 0  # taken (a collision, or our old session not yet gone): pick another
        self.lock_key = key
        await conn.add_listener(WAKEUP_CHANNEL, self._notified)
        conn.add_termination_listener(self._connection_lost)
        await conn.execute(Q["register_worker"], self.worker_id, socket.gethostname(), os.getpid(),
                           __version__, list(self._queues) if self._queues else None, self.lock_key)
        self._conn = conn
        self._broken.clear()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if isinstance(payload, str) and payload.startswith("cancel:") and payload[7:].isdigit():
            self.owner.cancel_run(int(payload[7:]), "cancelled")
        self.owner.wakeup()

    @property
    def holds_lock(self) -> bool:
        """True while the liveness lock's connection is open (claim only then)."""
        return self._conn is not None and not self._conn.is_closed()

    def _connection_lost(self, _conn: object) -> None:
        self._broken.set()

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._broken.wait(), self._timeout)
            except TimeoutError:
                pass
            try:
                await self.beat()
            except Exception as exc:  # noqa: BLE001 - a failed beat is retried at the next one, never fatal
                log.warning("heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            if not self.holds_lock:
                await asyncio.sleep(min(self._timeout, 0.5))  # reconnecting: do not spin
            if time.monotonic() - self.last_renewed > self.lease_seconds and not self.fenced:
                self.fenced = True
                log.error("worker_self_fenced", worker_id=self.worker_id)
                self.owner.fence_all()

    async def beat(self) -> None:
        """One heartbeat: check the liveness connection (reconnected only when *it* is broken), then renew
        leases on a pooled connection — a failure there never touches the liveness lock."""
        await self._check_liveness()
        if not self.holds_lock:
            raise ConnectionError("liveness connection lost")  # renew only while our lock is held
        await self._renew()

    async def _check_liveness(self) -> None:
        if self._conn is None or self._conn.is_closed() or self._broken.is_set():
            await self._reconnect()
            return
        try:
            await asyncio.wait_for(self._conn.fetchval("SELECT 1"), self._timeout)
        except TimeoutError:
            # Slow is not broken: closing the connection would free the lock. Only a check that has not
            # answered for a whole lease (a half-open connection) counts as broken.
            now = time.monotonic()
            self._slow_since = self._slow_since or now
            log.warning("liveness_check_slow", seconds=round(now - self._slow_since, 1))
            if now - self._slow_since > self.lease_seconds:
                await self._reconnect()
            return
        except store.DB_OR_CONNECT_ERRORS as exc:
            log.warning("liveness_connection_failed", error=f"{type(exc).__name__}: {exc}")
            await self._reconnect()
            return
        self._slow_since = None

    async def _renew(self) -> None:
        """Renew the leases of our runs; cancel those that are no longer ours; touch the worker row."""
        asked = self.owner.active_runs()
        async with asyncio.timeout(self._timeout), self._pool.acquire() as conn:
            rows = await conn.fetch(Q["renew_leases"], self.worker_id, self.lease_seconds, asked)
            renewed = {row["id"] for row in rows}
            skipped = [run_id for run_id in asked if run_id not in renewed]
            # A skipped row may be locked by our own batch transaction: it is lost only if it is no
            # longer running here (a plain read never waits on that lock).
            ours = {r["id"] for r in await conn.fetch(Q["runs_running_here"], self.worker_id, skipped)} \
                if skipped else set()
        self.last_renewed = time.monotonic()
        self.fenced = False
        for row in rows:
            if row["cancel_requested"]:
                self.owner.cancel_run(row["id"], row["cancel_requested"])
        active = set(self.owner.active_runs())
        for run_id in skipped:
            if run_id not in ours and run_id in active:
                log.error("run_lease_lost", run_id=run_id, worker_id=self.worker_id)
                self.owner.cancel_run(run_id, "lease_lost")
        async with asyncio.timeout(self._timeout):
            await self._pool.execute(Q["heartbeat_worker"], self.worker_id)

    async def _reconnect(self) -> None:
        """Replace the liveness connection (it failed): terminate it, connect, re-take the lock."""
        self._slow_since = None
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        try:
            await self._connect()
        except store.DB_OR_CONNECT_ERRORS as exc:
            log.warning("worker_reconnect_failed", error=f"{type(exc).__name__}: {exc}")
            return
        log.info("worker_reconnected", worker_id=self.worker_id)
        self.owner.wakeup()
