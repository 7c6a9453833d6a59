"""``batcher run-job``: one run in the foreground through the same claim/lease/fence path as daemons.

JOB is a configured job name, or a handler type for an ad-hoc job (stored ``enabled=false, adhoc=true``
so no daemon schedules it; ``--job-name`` gives it its own name and so its own checkpoints). The run's
chain has root trigger ``cli``: daemons never claim it, and the reaper never queues its retry. Instead
the next ``run-job`` of the job takes the chain over: when the newest ``cli`` run of the job was abandoned
(its process died) or stopped by a shutdown, the new run is its retry and resumes from its run-scoped
checkpoint — never a chain whose last run was cancelled by a user. A live worker holding the job makes
``run-job`` wait (``--no-wait``: exit 1).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from batcher.app import Config
from batcher.errors import ConfigError
from batcher.jobs import not_synced, validate_params
from batcher.models import Services
from batcher.recovery import abandon_run
from batcher.runner import RETRY_SQLSTATES, RunExecution
from batcher.store import DB_ERRORS, Q
from batcher.worker import LOCK_CLASS, Worker

log = structlog.get_logger("batcher.runjob")
BUSY_POLL_SECONDS = 0.5


class JobBusy(Exception):
    """A live worker runs this job and the caller asked not to wait."""


async def ensure_job(services: Services, config: Config, job: str, job_name: str | None,
                     params: Mapping[str, Any], literal_secrets: Mapping[str, str]) -> str:
    """Resolve JOB to a batch_config row (creating an ad-hoc job for a bare handler type). The caller's
    batcher.toml is not consulted for jobs: a job only in the file is refused (see ``not_synced``)."""
    row = await services.pool.fetchrow(Q["get_job"], job_name or job)
    if row is not None and job_name is None:
        handler = config.registry.get(row["job_type"])
        if handler is None:
            raise ConfigError(f"job {job!r} has unknown type {row['job_type']!r}")
        validate_params(handler, {**row["params"], **params, **literal_secrets}, job=job,
                        allow_literal_secrets=True)
        return str(row["job_name"])
    name = job_name or job
    if row is None and name in config.jobs:
        raise not_synced(name)  # the caller's file is never written into batch_config here
    if job not in config.registry:
        raise ConfigError(f"{job!r} is neither a configured job nor a job type "
                          f"(types: {', '.join(sorted(config.registry))})")
    if row is not None and not row["adhoc"]:
        raise ConfigError(f"--job-name {name!r} is a configured job; pick another name")
    validate_params(config.registry[job], {**params, **literal_secrets}, job=name, allow_literal_secrets=True)
    await services.pool.execute(Q["upsert_adhoc_job"], name, job, {})
    return name


async def claim_foreground_run(services: Services, worker: Worker, job_name: str,
                               params: Mapping[str, Any], *, wait: bool) -> dict[str, Any]:
    """Create and claim this command's run in one transaction, recovering a dead worker's run first.
    A transaction the database rolled back to break a deadlock or a serialization conflict is retried."""
    announced = False
    while True:
        try:
            claimed, running = await _try_claim(services, worker, job_name, params)
        except DB_ERRORS as exc:
            sqlstate = getattr(exc, "sqlstate", None)
            if sqlstate not in RETRY_SQLSTATES:
                raise
            log.info("claim_retried", job=job_name, sqlstate=sqlstate)
            continue
        if claimed is not None:
            return claimed
        if not wait:
            raise JobBusy(f"job {job_name!r} is running on live worker {running['worker_id']} "
                          f"(run {running['id']})")
        if not announced:
            log.info("job_busy_waiting", job=job_name, run_id=running["id"], worker_id=running["worker_id"])
            announced = True
        await asyncio.sleep(BUSY_POLL_SECONDS)


async def _try_claim(services: Services, worker: Worker, job_name: str,
                     params: Mapping[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """(the claimed run, None), or (None, the live run that holds the job). Job rows are locked before
    the run row (``lock_job_family``), the order every finisher and the reaper use too."""
    async with services.pool.acquire() as conn, conn.transaction():
        await conn.execute(Q["lock_job_family"], job_name)
        job = await conn.fetchrow(Q["lock_job"], job_name)
        running = await conn.fetchrow(Q["running_run_of_job"], job_name, LOCK_CLASS)
        if running is not None and running["worker_alive"] and not running["lease_expired"]:
            return None, running
        previous = None
        if running is not None:
            same_work = dict(running["params"] or {}) == dict(params)
            # same work: this run continues the dead run's chain from its checkpoint; other work: the
            # dead run is recovered as any daemon recovers it (a retry unless it was a run-job chain).
            # A cancel requested for the dead run ends its chain: it is neither continued nor retried.
            await abandon_run(conn, dict(running),
                              queue_retry=not same_work and running["root_trigger"] != "cli")
            previous = running if same_work and not running["cancel_requested"] else None
        else:
            previous = await _resumable_chain(conn, job_name, params)
        return await _insert_claimed(conn, services, worker, job, params, previous), None


async def _resumable_chain(conn: Any, job_name: str, params: Mapping[str, Any]) -> Any:
    last = await conn.fetchrow(Q["latest_chain_run"], job_name)
    if last is None or dict(last["params"] or {}) != dict(params):
        return None
    if last["status"] == "failed" and last["reason"] == "abandoned":
        return last
    if last["status"] == "cancelled" and last["reason"] == "shutdown":  # never after a user's cancel
        return last
    return None


async def _insert_claimed(conn: Any, services: Services, worker: Worker, job: Any,
                          params: Mapping[str, Any], previous: Any) -> dict[str, Any]:
    if previous is not None:
        root = previous["root_run_id"] or previous["id"]
        run_id = await conn.fetchval(Q["insert_queued_run"], job["job_name"], job["job_type"], "retry",
                                     job["priority"], dict(params), 0.0, previous["id"], root,
                                     previous["attempt"], previous["abandons"] + 1, "cli")
    else:
        run_id = await conn.fetchval(Q["insert_queued_run"], job["job_name"], job["job_type"], "cli",
                                     job["priority"], dict(params), 0.0, None, None, 1, 0, "cli")
    row = await conn.fetchrow(Q["claim_run_by_id"], run_id, worker.worker_id,
                              services.settings.daemon.lease_seconds)
    return dict(row)


async def run_foreground(services: Services, config: Config, job: str, *, job_name: str | None,
                         params: Mapping[str, Any], literal_secrets: Mapping[str, str],
                         wait: bool, handle_signals: bool = True,
                         on_start: Callable[[RunExecution], None] | None = None) -> dict[str, Any]:
    """Run one run of JOB here and now; returns the summary. SIGTERM/SIGINT cancel it at once.
    ``on_start`` sees the execution once claimed (the CLI's progress line reads its state)."""
    name = await ensure_job(services, config, job, job_name, params, literal_secrets)
    worker = Worker(services.database_url, services.pool, lease_seconds=services.settings.daemon.lease_seconds,
                    queues=None, kind="run-job")
    await worker.start()
    try:
        run = await claim_foreground_run(services, worker, name, params, wait=wait)
        execution = RunExecution(services, run, lease_seconds=worker.lease_seconds,
                                 literal_secrets=literal_secrets, queue_retries=False)
        worker.owner = _ForegroundOwner(execution)
        if on_start is not None:
            on_start(execution)
        task = asyncio.create_task(execution.execute())
        if handle_signals:
            _cancel_on_signals(task, execution)
        return await task
    finally:
        await worker.stop()


class _ForegroundOwner:
    """The worker's owner for a run-job: one execution, no scheduling loop."""

    def __init__(self, execution: RunExecution) -> None:
        self.execution = execution

    def wakeup(self) -> None:
        pass

    def cancel_run(self, run_id: int, reason: str) -> None:
        if run_id == self.execution.run["id"]:
            self.execution.request_cancel(reason)

    def fence_all(self) -> None:
        self.execution.request_cancel("lease_lost")

    def active_runs(self) -> list[int]:
        return [] if self.execution.state.final_committed else [int(self.execution.run["id"])]


def _cancel_on_signals(task: asyncio.Task[Any], execution: RunExecution) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        execution.request_cancel("shutdown")
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
