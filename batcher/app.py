"""The composition root: settings → logs → embedded servers → pool → worker → scheduler (→ API).

Everything is opened on one AsyncExitStack and closed in reverse order. ``run_daemon`` waits for
SIGTERM/SIGINT, then drains (DESIGN §5) and returns exit status 0. ``open_services`` is shared with the
CLI commands that need the database. Only the daemon waits for an unreachable PostgreSQL at start-up
(:class:`DatabaseWait`: one ``database_unreachable`` line per attempt, backoff, not ready until it
answers, exit 0 on SIGTERM while waiting); the one-off commands fail at once.
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
from batcher.errors import BatcherError, ConfigError, SchemaTooNewError, ServiceUnavailableError
from batcher.gcpolicy import freeze_startup_objects
from batcher.handler import Handler
from batcher.jobs import JobSpec, check_job_sinks, parse_jobs, sync_jobs
from batcher.logs import configure_logging
from batcher.models import Services
from batcher.recovery import count_live_workers
from batcher.registry import handler_rate_limits, load_registry
from batcher.settings import Settings, load_settings, systemd_environment
from batcher.shutdown import ShutdownMonitor
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
    mongo = settings.mongo
    needs_mongo = check_job_sinks(jobs, registry, mongo_configured=mongo.uri is not None, file=file)
    if mongo.history and mongo.uri is None:
        raise ConfigError("mongo.history needs a MongoDB: set MONGODB_URI (or mongo.uri)", key="mongo.history")
    if (needs_mongo or mongo.history) and mongo.uri is not None:  # the database it would write to
        from batcher.sinks.mongo import database_name

        database_name(mongo.uri, mongo.database)
    return Config(settings, registry, jobs)


@dataclass
class DatabaseWait:
    """How the daemon waits for PostgreSQL at start-up: attempts with doubling delays (capped), each
    logged and reported to systemd (not ready, start timeout extended), until it answers or ``stop``."""

    stop: asyncio.Event
    notifier: Notifier
    first_delay: float = 0.5
    max_delay: float = 30.0


class StartupAborted(BatcherError):
    """SIGTERM/SIGINT arrived while the daemon was still waiting for its database (exit 0)."""


async def _pool_after_retries(url: str, size: int, wait: DatabaseWait) -> Any:
    delay, attempt = wait.first_delay, 0
    while True:
        attempt += 1
        try:
            return await store.create_pool(url, size=size)
        except ServiceUnavailableError as exc:
            log.warning("database_unreachable", attempt=attempt, retry_in_s=delay, error=str(exc))
            wait.notifier.waiting(f"waiting for PostgreSQL (attempt {attempt}): {exc}",
                                  delay + store.CONNECT_TIMEOUT + 30)
        await asyncio.sleep(delay)
        delay = min(delay * 2, wait.max_delay)


async def _create_pool(url: str, size: int, wait: DatabaseWait | None) -> Any:
    """The pool; with ``wait``, retried until PostgreSQL answers or ``wait.stop`` is set (StartupAborted)."""
    if wait is None:
        return await store.create_pool(url, size=size)
    attempts = asyncio.ensure_future(_pool_after_retries(url, size, wait))
    stopped = asyncio.ensure_future(wait.stop.wait())
    try:
        await asyncio.wait((attempts, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not attempts.done():
        attempts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attempts
        raise StartupAborted("stopped while waiting for PostgreSQL")
    return attempts.result()


@contextlib.asynccontextmanager
async def open_services(config: Config, *, start_embedded: bool,
                        schema: Literal["migrate", "check", "none"] = "migrate",
                        sync: bool = False, http: bool = False,
                        wait: DatabaseWait | None = None) -> AsyncIterator[Services]:
    """Embedded servers (when no URL is set), the pool, the schema (migrated, checked, or left to the
    caller as ``batcher migrate`` does), optionally the file sync and HTTP. Only the daemon syncs: one-off
    commands read batch_config and never write the file's jobs into it (``batcher jobs sync`` does).
    With ``wait`` an unreachable PostgreSQL is retried (the daemon), else it fails at once."""
    s = config.settings
    async with contextlib.AsyncExitStack() as stack:
        urls = await stack.enter_async_context(
            embedded.services(s.database.url, s.redis.url, s.daemon.data_dir, start=start_embedded))
        pool = await _create_pool(urls.database_url, s.database.pool_size, wait)
        stack.push_async_callback(store.close_pool, pool)
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
        if s.mongo.uri is not None:  # the client itself opens on first use
            from batcher.sinks.mongo import MongoConnection

            services.mongo = MongoConnection(s.mongo.uri, s.mongo.params, s.mongo.database)
            stack.push_async_callback(services.mongo.close)
        if http:
            from batcher.http import HttpRuntime

            services.http = HttpRuntime(s.rate_limits, urls.redis_url,
                                        live_workers=functools.partial(count_live_workers, pool),
                                        default_rate_limits=handler_rate_limits(config.registry))
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
    monitor = ShutdownMonitor()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(monitor.stop)  # the last callback: it reports on every step before it
        try:
            services = await stack.enter_async_context(open_services(
                config, start_embedded=True, sync=True, http=True, wait=DatabaseWait(stop, notifier)))
        except StartupAborted:
            log.info("daemon_stopped", ready=False)
            return 0
        worker = Worker(services.database_url, services.pool, lease_seconds=s.daemon.lease_seconds,
                        queues=s.daemon.queues)
        scheduler = Scheduler(services, worker)
        await worker.start()
        stack.push_async_callback(worker.stop)
        await _start_api(stack, services, scheduler)  # before scheduling: a port in use stops us (exit 2)
        await scheduler.start()
        _start_history_mirror(stack, services)
        watchdog = asyncio.create_task(_watchdog(notifier, scheduler)) if notifier.watchdog_interval else None
        notifier.ready()
        log.info("daemon_ready", worker_id=worker.worker_id, concurrency=s.daemon.concurrency,
                 queues=s.daemon.queues, jobs=len(config.jobs))
        await stop.wait()
        notifier.stopping()
        log.info("daemon_stopping", grace_seconds=s.daemon.shutdown_grace_seconds)
        monitor.start("draining")
        await scheduler.drain(s.daemon.shutdown_grace_seconds)
        if watchdog is not None:
            watchdog.cancel()
        monitor.step = "closing"
    log.info("daemon_stopped")
    return 0


def _start_history_mirror(stack: contextlib.AsyncExitStack, services: Services) -> None:
    """With ``[mongo] history = true``: the background task mirroring finished runs into ``jobhistories``
    (cancelled when the stack closes, before the MongoDB client is)."""
    if not (services.settings.mongo.history and services.mongo is not None):
        return
    from batcher.jobhistory import HistoryMirror

    task = asyncio.create_task(HistoryMirror(services.pool, services.mongo).run(), name="batcher-jobhistory")
    stack.callback(task.cancel)


async def _start_api(stack: contextlib.AsyncExitStack, services: Services, scheduler: Any) -> None:
    """The admin API on BATCHER_API_HOST:BATCHER_API_PORT (port 0: none), served until the stack closes."""
    from batcher.api import start_api

    await start_api(stack, services, scheduler)
