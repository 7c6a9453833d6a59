"""This process's identity as a worker: liveness lock, LISTEN, one heartbeat renewing all its leases.

A worker holds a session advisory lock (``pg_advisory_lock(LOCK_CLASS, lock_key)``) on its own dedicated
connection — never a pooled one, whose reset would drop it — and LISTENs for ``batcher_wakeup`` on the
same connection. When a worker dies (even ``kill -9``) PostgreSQL frees the lock within seconds, and any
other worker's reaper sees it. When the connection breaks, it reconnects, re-takes the lock, re-LISTENs
and asks the scheduler for a catch-up tick.

The heartbeat runs every third of the lease: it renews the leases of the runs this process is executing
(a row left ``running`` by a crashed task is not renewed, so it expires and is reaped) that are not locked
by a batch transaction (``FOR UPDATE SKIP LOCKED``), reports cancel requests, and — if it cannot
renew for a whole lease — self-fences (cancels its handlers).
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
from batcher.store import Q

LOCK_CLASS = 0x42415443  # "BATC": advisory-lock namespace of worker liveness locks
WAKEUP_CHANNEL = "batcher_wakeup"
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
        """Ids of the runs this process is executing (only their leases are renewed)."""


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

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat {self.worker_id}")
        log.info("worker_started", worker_id=self.worker_id, kind=self._kind, queues=self._queues)

    async def stop(self) -> None:
        """Stop the heartbeat, delete the worker row, release the lock (call after runs ended)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._pool.execute(Q["delete_worker"], self.worker_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass
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
        interval = max(self.lease_seconds / 3, 0.2)
        while True:
            try:
                await asyncio.wait_for(self._broken.wait(), interval)
            except TimeoutError:
                pass
            try:
                await self.beat()
            except store.DB_OR_CONNECT_ERRORS as exc:
                log.warning("heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
                await self._reconnect()
                if not self.holds_lock:
                    await asyncio.sleep(min(interval, 0.5))
            if time.monotonic() - self.last_renewed > self.lease_seconds and not self.fenced:
                self.fenced = True
                log.error("worker_self_fenced", worker_id=self.worker_id)
                self.owner.fence_all()

    async def beat(self) -> None:
        """One heartbeat: check the lock connection, renew leases, report cancel requests."""
        if self._conn is None or self._conn.is_closed():
            raise ConnectionError("liveness connection lost")
        await asyncio.wait_for(self._conn.fetchval("SELECT 1"), self.lease_seconds / 3)
        async with self._pool.acquire() as conn:
            await conn.execute(Q["heartbeat_worker"], self.worker_id)
            rows = await conn.fetch(Q["renew_leases"], self.worker_id, self.lease_seconds, self.owner.active_runs())
        for row in rows:
            if row["cancel_requested"]:
                self.owner.cancel_run(row["id"], row["cancel_requested"])
        self.last_renewed = time.monotonic()
        self.fenced = False

    async def _reconnect(self) -> None:
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

