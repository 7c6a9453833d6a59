"""The admin API's endpoints, free of the web framework: validated input in, a response model out.

Owns what each operation of :data:`batcher.openapi.OPERATIONS` does. A view gets the
:class:`ApiContext`, the raw path parameters, and the query and body already validated by their models
(:mod:`batcher.apimodels`); it returns a response model (HTTP 200) or a :class:`Reply` (another status or
a non-JSON body), and raises :class:`ApiError`, :class:`batcher.commands.NotFound`,
:class:`batcher.commands.Conflict` or :class:`~batcher.errors.ConfigError` for the error envelope. The
work itself is :mod:`batcher.commands`, shared with the CLI; :mod:`batcher.api` serves these views.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from pydantic import BaseModel

from batcher import apimodels as m
from batcher import commands, metrics
from batcher.models import Services
from batcher.store import DB_ERRORS, Q

log = structlog.get_logger("batcher.api")
READY_TIMEOUT = 3.0


class SchedulerView(Protocol):
    """What the API reads from the daemon's :class:`~batcher.scheduler.Scheduler`."""

    ticks: int
    last_tick: float
    tick_seconds: float
    concurrency: int
    queues: list[str] | None
    running: dict[int, Any]
    worker: Any

    def loop_healthy(self, bound: float) -> bool:
        """The loop runs and no pass has been in progress for longer than ``bound`` seconds."""


@dataclass
class ApiContext:
    """What every view may use: the services, the daemon's scheduler (None: API only), the token."""

    services: Services
    scheduler: SchedulerView | None
    token: str | None
    feed: metrics.DatabaseMetrics
    stall_after: float
    document: bytes


@dataclass
class Reply:
    """A response other than "200 with this model": another status, or a non-JSON body."""

    status: int = 200
    model: BaseModel | None = None
    body: bytes = b""
    content_type: str = "application/json"


class ApiError(Exception):
    """An error answer: HTTP status, code, message and the offending field (camelCase) if any."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


Path = Mapping[str, str]
View = Callable[[ApiContext, Path, Any, Any], Awaitable[BaseModel | Reply]]


def run_id_of(path: Path) -> int:
    text = path["id"]
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not 1 <= int(text) <= m.BIGINT_MAX:
        raise ApiError(400, "invalid_parameter", f"run id must be an integer from 1 to {m.BIGINT_MAX}", "id")
    return int(text)


def job_name_of(path: Path) -> str:
    name = path["name"]
    try:
        if not 1 <= len(name) <= 200:
            raise ValueError("must be 1 to 200 characters")
        return m.checked_text(name)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", f"job name {exc}", "name") from None


async def _resolve(ctx: ApiContext, ref: m.JobRef) -> str:
    try:
        return await commands.resolve_job(ctx.services.pool, ref.job_type, ref.job_name)
    except commands.Conflict as exc:
        raise ApiError(409, "ambiguous_job_type", str(exc), "jobType") from None


# ------------------------------------------------------------------------------------------ jobs


async def get_config(ctx: ApiContext, _p: Path, _q: Any, _b: Any) -> BaseModel:
    rows = await ctx.services.pool.fetch(Q["list_jobs"])
    return m.ConfigResponse(config={r["job_name"]: m.job_config(commands.job_view(dict(r))) for r in rows})


async def update_config(ctx: ApiContext, _p: Path, _q: Any, body: m.ConfigUpdate) -> BaseModel:
    changes = body.model_dump(exclude_unset=True, exclude={"job_type", "job_name"})
    if not any(v is not None for v in changes.values()):
        raise ApiError(400, "validation_error", "nothing to change: give at least one setting")
    name = await _resolve(ctx, body)
    row, rescheduled = await commands.update_job_config(ctx.services.pool, ctx.services.registry, name, changes)
    config = m.job_config(commands.job_view(row))
    nxt = config.next_run_at.isoformat() if config.next_run_at else "none (not scheduled)"
    message = f"job {name!r} updated" + (f"; next run {nxt}" if rescheduled else "")
    log.info("api_config_updated", job=name, keys=sorted(changes), rescheduled=rescheduled)
    return m.ConfigUpdateResponse(config=config, message=message)


async def trigger(ctx: ApiContext, _p: Path, _q: Any, body: m.TriggerRequest) -> BaseModel:
    name = await _resolve(ctx, body)
    run_id, existing = await commands.trigger_run(ctx.services.pool, ctx.services.registry, name, body.params)
    message = (f"run {run_id} of {name!r} was already queued with these params" if existing
               else f"run {run_id} of {name!r} queued")
    log.info("api_run_triggered", job=name, run_id=run_id, existing=existing)
    return m.TriggerResponse(run_id=run_id, existing=existing, message=message)


async def _set_paused(ctx: ApiContext, path: Path, paused: bool) -> BaseModel:
    name = job_name_of(path)
    await commands.set_paused(ctx.services.pool, name, paused)
    log.info("api_job_paused" if paused else "api_job_resumed", job=name)
    return m.PauseResponse(job=name, paused=paused, message=f"job {name!r} {'paused' if paused else 'resumed'}")


async def pause(ctx: ApiContext, path: Path, _q: Any, _b: Any) -> BaseModel:
    return await _set_paused(ctx, path, True)


async def resume(ctx: ApiContext, path: Path, _q: Any, _b: Any) -> BaseModel:
    return await _set_paused(ctx, path, False)


async def job_history(ctx: ApiContext, _p: Path, q: m.HistoryQuery, _b: Any) -> BaseModel:
    history = await commands.job_history(ctx.services.pool, q.runs)
    return m.HistoryResponse(history={job: [m.RunPoint.model_validate(r) for r in rows]
                                      for job, rows in history.items()})


async def next_runs(ctx: ApiContext, path: Path, q: m.NextQuery, _b: Any) -> BaseModel:
    job, times = await commands.next_occurrences(ctx.services.pool, job_name_of(path), q.n)
    if not times:
        message = "no schedule of its own" + (" (runs after its dependencies)" if job["depends_on"] else "")
    elif not job["enabled"] or job["paused"]:
        message = "not scheduled now (disabled or paused): these are the occurrences it would run at"
    else:
        message = f"next {len(times)} occurrence(s)"
    return m.NextResponse(job=job["job_name"], enabled=job["enabled"], paused=job["paused"], next=times,
                          message=message)


# ------------------------------------------------------------------------------------------ runs


async def list_runs(ctx: ApiContext, _p: Path, q: m.RunsQuery, _b: Any) -> BaseModel:
    rows, cursor = await commands.page_runs(ctx.services.pool, job=q.job, status=q.status, since=q.since,
                                            limit=q.limit, cursor=q.cursor)
    return m.RunsResponse(runs=[m.run_summary(r) for r in rows], next_cursor=cursor)


async def latest_run(ctx: ApiContext, _p: Path, q: m.LatestQuery, _b: Any) -> BaseModel:
    if q.by_job_type:
        latest = await commands.latest_run_per_job(ctx.services.pool)
        return m.LatestRunsByJobResponse(runs={job: m.run_summary(r) for job, r in latest.items()})
    row = await commands.latest_run(ctx.services.pool, q.job)
    return m.LatestRunResponse(run=None if row is None else m.run_summary(row))


async def get_run(ctx: ApiContext, path: Path, _q: Any, _b: Any) -> BaseModel:
    run = await commands.show_run(ctx.services.pool, run_id_of(path))
    return m.RunResponse(run=m.RunDetail.model_validate(run))


async def cancel(ctx: ApiContext, path: Path, _q: Any, _b: Any) -> BaseModel:
    run_id = run_id_of(path)
    result = await commands.cancel_run(ctx.services.pool, run_id)
    message = f"run {run_id} cancelled" if result == "cancelled" else \
        f"run {run_id} asked to stop at its next batch boundary"
    log.info("api_run_cancel", run_id=run_id, result=result)
    return m.CancelResponse.model_validate({"run_id": run_id, "result": result, "message": message})


async def dead_letters(ctx: ApiContext, _p: Path, q: m.DeadLettersQuery, _b: Any) -> BaseModel:
    from batcher.deadletters import list_dead_letters

    rows = await list_dead_letters(ctx.services.pool, q.job, q.limit, q.include_resolved)
    return m.DeadLettersResponse(dead_letters=[m.DeadLetter.model_validate(r) for r in rows])


async def list_handlers(ctx: ApiContext, _p: Path, _q: Any, _b: Any) -> BaseModel:
    from batcher.handlertypes import describe_handlers

    return m.HandlersResponse(handlers=[m.HandlerType.model_validate(h)
                                        for h in describe_handlers(ctx.services.registry)])


# ------------------------------------------------------------------------ daemon, probes, metrics


def _seconds_since_tick(ctx: ApiContext) -> float | None:
    return None if ctx.scheduler is None else max(time.monotonic() - ctx.scheduler.last_tick, 0.0)


def _loop_alive(ctx: ApiContext, since: float | None) -> bool:
    """The loop is alive: it runs (not dead), no pass is stuck, and its last full pass is recent."""
    return (ctx.scheduler is not None and since is not None and since <= ctx.stall_after
            and ctx.scheduler.loop_healthy(ctx.stall_after))


async def get_status(ctx: ApiContext, _p: Path, _q: Any, _b: Any) -> BaseModel:
    overview = await commands.scheduling_overview(ctx.services.pool)
    sched, since = ctx.scheduler, _seconds_since_tick(ctx)
    worker = None if sched is None else m.ThisWorker(
        worker_id=sched.worker.worker_id, concurrency=sched.concurrency, queues=sched.queues,
        active_runs=sorted(sched.running))
    scheduler = m.SchedulerStatus(
        is_running=_loop_alive(ctx, since), is_initialized=sched is not None,
        active_job_timers=overview["active_job_timers"], last_run_times=overview["last_run_times"],
        ticks=0 if sched is None else sched.ticks)
    status = m.Status(registered_jobs=overview["registered_jobs"], running_jobs=overview["running_jobs"],
                      scheduler=scheduler, worker=worker,
                      workers=[m.WorkerInfo.model_validate(w) for w in overview["workers"]])
    return m.StatusResponse(status=status)


READ_ONLY_ADVICE = "start the daemon with BATCHER_API_TOKEN=<a secret> to allow changes"


async def info(ctx: ApiContext, _p: Path, _q: Any, _b: Any) -> BaseModel:
    from batcher import __version__

    read_only = ctx.token is None
    return m.InfoResponse(version=__version__, read_only=read_only,
                          how_to_allow_changes=READ_ONLY_ADVICE if read_only else None)


async def openapi(ctx: ApiContext, _p: Path, _q: Any, _b: Any) -> Reply:
    return Reply(body=ctx.document)


async def metrics_text(ctx: ApiContext, _p: Path, _q: Any, _b: Any) -> Reply:
    await ctx.feed.refresh(ctx.services.pool)
    if ctx.scheduler is not None:
        metrics.SCHEDULER_TICKS.set(ctx.scheduler.ticks)
    body, content_type = metrics.render()
    return Reply(body=body, content_type=content_type)


async def healthz(ctx: ApiContext, _p: Path, _q: Any, _b: Any) -> Reply:
    since = _seconds_since_tick(ctx)
    alive = _loop_alive(ctx, since)
    body = m.HealthResponse(success=alive, alive=alive, ticks=0 if ctx.scheduler is None else ctx.scheduler.ticks,
                            seconds_since_tick=None if since is None else round(since, 3))
    return Reply(status=200 if alive else 503, model=body)


async def _postgres_check(ctx: ApiContext) -> m.Check:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await ctx.services.pool.fetchval(Q["db_now"])
    except TimeoutError:
        return m.Check(ok=False, reason=f"no answer within {READY_TIMEOUT:g} s")
    except DB_ERRORS as exc:
        return m.Check(ok=False, reason=type(exc).__name__)
    return m.Check(ok=True, reason="ok")


async def _redis_check(ctx: ApiContext) -> m.Check:
    from batcher.connections import redis_health

    ok, reason = await redis_health(ctx.services.redis_url, READY_TIMEOUT)
    return m.Check(ok=ok, reason=reason)


async def readyz(ctx: ApiContext, _p: Path, _q: Any, _b: Any) -> Reply:
    postgres, redis = await asyncio.gather(_postgres_check(ctx), _redis_check(ctx))
    ready = postgres.ok and redis.ok
    body = m.ReadyResponse(success=ready, checks={"postgres": postgres, "redis": redis})
    return Reply(status=200 if ready else 503, model=body)


VIEWS: dict[str, View] = {
    "getConfig": get_config, "updateConfig": update_config, "getStatus": get_status, "triggerRun": trigger,
    "listRuns": list_runs, "latestRun": latest_run, "getRun": get_run, "cancelRun": cancel,
    "pauseJob": pause, "resumeJob": resume, "nextRuns": next_runs, "listDeadLetters": dead_letters,
    "jobHistory": job_history, "getInfo": info, "openapi": openapi, "metrics": metrics_text,
    "healthz": healthz, "readyz": readyz, "listHandlers": list_handlers,
}
