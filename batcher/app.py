"""The composition root: settings → logs → embedded servers → pool → worker → scheduler (→ API).

Everything is opened on one AsyncExitStack and closed in reverse order. ``run_daemon`` waits for
SIGTERM/SIGINT, then drains (DESIGN §5) and returns exit status 0. ``open_services`` is shared with the
CLI commands that need the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from batcher import embedded, store
from batcher.errors import ConfigError, SchemaTooNewError
from batcher.gcpolicy import freeze_startup_objects
from batcher.handler import Handler
from batcher.jobs import JobSpec, parse_jobs, sync_jobs
from batcher.logs import configure_logging
from batcher.models import Services
from batcher.recovery import count_live_workers
from batcher.registry import load_registry
from batcher.settings import Settings, load_settings, systemd_environment
from batcher.systemd import Notifier

log = structlog.get_logger("batcher.app")


@dataclass
class Config:
    """Validated configuration: settings, handler registry and the file's jobs."""

    settings: Settings
    registry: dict[str, type[Handler]]
    jobs: dict[str, JobSpec]


def load_config(settings: Settings | None = None) -> Config:
    """Read settings and validate every job of the file (ConfigError → exit 2)."""
    settings = settings or load_settings()
    registry = load_registry()
    file = str(settings.config_path) if settings.config_path else None
    jobs = parse_jobs(settings.jobs, registry, file)
    return Config(settings, registry, jobs)


@contextlib.asynccontextmanager
async def open_services(config: Config, *, start_embedded: bool,
                        schema: Literal["migrate", "check", "none"] = "migrate",
                        sync: bool = False, http: bool = False) -> AsyncIterator[Services]:
    """Embedded servers (when no URL is set), the pool, the schema (migrated, checked, or left to the
    caller as ``batcher migrate`` does), optionally the file sync and HTTP. Only the daemon syncs: one-off
    commands read batch_config and never write the file's jobs into it (``batcher jobs sync`` does)."""
    s = config.settings
    async with contextlib.AsyncExitStack() as stack:
        urls = await stack.enter_async_context(
            embedded.services(s.database.url, s.redis.url, s.daemon.data_dir, start=start_embedded))
        pool = await store.create_pool(urls.database_url, size=s.database.pool_size)
        stack.push_async_callback(pool.close)
        if schema == "migrate":
            async with pool.acquire() as conn:
                applied = await store.migrate(conn)
            if applied:
                log.info("schema_migrated", applied=applied)
        elif schema == "check":
            await _check_schema(pool)
        if sync:
            log.info("jobs_synced", **await sync_jobs(pool, config.jobs, s.jobs, config.registry))
        services = Services(s, pool, urls.database_url, urls.redis_url, config.registry)
        if http:
            from batcher.http import HttpRuntime

            services.http = HttpRuntime(s.rate_limits, urls.redis_url,
                                        live_workers=functools.partial(count_live_workers, pool))
            await services.http.start()
            stack.push_async_callback(services.http.close)
        stack.push_async_callback(_close_redis, services)
        freeze_startup_objects()
        yield services


async def _close_redis(services: Services) -> None:
    if services.redis is not None:
        await services.redis.aclose()


async def _check_schema(pool: Any) -> None:
    async with pool.acquire() as conn:
        version = await store.schema_version(conn)
    newest = store.code_schema_version()
    if version > newest:
        raise SchemaTooNewError(f"the database schema is version {version}, newer than this batcher "
                                      f"(knows up to {newest})")
    if version < newest:
        raise ConfigError(f"the database schema is version {version}; run `batcher migrate` first")


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def watchdog_beat(notifier: Notifier, scheduler: Any) -> bool:
    """One watchdog check: WATCHDOG=1 only while the scheduling loop runs and no pass of it has been stuck
    for longer than the watchdog interval (without it, systemd kills and restarts the daemon)."""
    assert notifier.watchdog_interval is not None
    if not scheduler.loop_healthy(notifier.watchdog_interval):
        log.error("watchdog_withheld", loop_running=scheduler.loop_running)
        return False
    notifier.watchdog()
    return True


async def _watchdog(notifier: Notifier, scheduler: Any) -> None:
    assert notifier.watchdog_interval is not None
    while True:
        await asyncio.sleep(notifier.watchdog_interval)
        watchdog_beat(notifier, scheduler)


async def run_daemon(config: Config) -> int:
    """``batcher run``: schedule and run jobs until SIGTERM/SIGINT, then drain. Returns 0."""
    from batcher.scheduler import Scheduler
    from batcher.worker import Worker

    s = config.settings
    configure_logging(s.log.format, s.log.level)
    from batcher.api import check_bind

    check_bind(s.api)  # a non-loopback API without a token: refuse before doing any work (exit 2)
    stop = asyncio.Event()
    _install_signals(stop)
    notifier = Notifier(*systemd_environment())
    async with contextlib.AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(config, start_embedded=True, sync=True,
                                                                 http=True))
        worker = Worker(services.database_url, services.pool, lease_seconds=s.daemon.lease_seconds,
                        queues=s.daemon.queues)
        scheduler = Scheduler(services, worker)
        await worker.start()
        stack.push_async_callback(worker.stop)
        await _start_api(stack, services, scheduler)  # before scheduling: a port in use stops us (exit 2)
        await scheduler.start()
        watchdog = asyncio.create_task(_watchdog(notifier, scheduler)) if notifier.watchdog_interval else None
        notifier.ready()
        log.info("daemon_ready", worker_id=worker.worker_id, concurrency=s.daemon.concurrency,
                 queues=s.daemon.queues, jobs=len(config.jobs))
        await stop.wait()
        notifier.stopping()
        log.info("daemon_stopping", grace_seconds=s.daemon.shutdown_grace_seconds)
        await scheduler.drain(s.daemon.shutdown_grace_seconds)
        if watchdog is not None:
            watchdog.cancel()
    log.info("daemon_stopped")
    return 0


async def _start_api(stack: contextlib.AsyncExitStack, services: Services, scheduler: Any) -> None:
    """The admin API on BATCHER_API_HOST:BATCHER_API_PORT (port 0: none), served until the stack closes."""
    from batcher.api import start_api

    await start_api(stack, services, scheduler)
