"""An in-process daemon for tests: a worker (liveness lock, heartbeat) and the scheduler loop on the test's
services, started in order and stopped in reverse (the scheduler drained first) when the block exits; and
the daemon's start-up sync of the config file, for tests of commands that read the synced jobs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from batcher import app, store
from batcher.jobs import sync_jobs
from batcher.models import Services
from batcher.scheduler import Scheduler
from batcher.worker import Worker


@contextlib.asynccontextmanager
async def running_worker(services: Services, *, lease_seconds: float | None = None,
                         kind: str = "daemon") -> AsyncIterator[Worker]:
    """A started worker on ``services`` serving the settings' queues (and, by default, lease), stopped at
    exit."""
    d = services.settings.daemon
    lease = d.lease_seconds if lease_seconds is None else lease_seconds
    worker = Worker(services.database_url, services.pool, lease_seconds=lease, queues=d.queues, kind=kind)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


@contextlib.asynccontextmanager
async def daemon(services: Services, *, lease_seconds: float | None = None, drain_seconds: float = 2.0,
                 prepare: Callable[[Scheduler], None] | None = None) -> AsyncIterator[Scheduler]:
    """An in-process daemon: a started worker and scheduler, drained (``drain_seconds`` of grace) and
    stopped at exit. The lease defaults to the settings' (``daemon.lease_seconds``); ``prepare`` is given
    the scheduler before it starts (to wrap one of its methods)."""
    async with running_worker(services, lease_seconds=lease_seconds) as worker:
        scheduler = Scheduler(services, worker)
        if prepare is not None:
            prepare(scheduler)
        await scheduler.start()
        try:
            yield scheduler
        finally:
            await scheduler.drain(drain_seconds)


def sync_config_file(database_url: str | None = None) -> None:
    """What ``batcher run`` does at start-up, in a fresh event loop: load the config (environment and
    ``BATCHER_CONFIG``) and sync its jobs into an emptied ``batch_config`` (``database_url``: default, the
    config's)."""
    async def sync() -> None:
        config = app.load_config()
        pool = await store.create_pool(database_url or config.settings.database.url or "", size=2)
        try:
            await pool.execute("TRUNCATE batch_config")
            await sync_jobs(pool, config.jobs, config.settings.jobs, config.registry)
        finally:
            await pool.close()

    asyncio.run(sync())
