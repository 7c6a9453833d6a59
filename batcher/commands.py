"""Operations on jobs and runs shared by the CLI and the admin API: trigger, cancel, pause, list, show.

Each takes the pool and plain values and returns plain data (JSON-ready dicts), so both front ends stay
thin. Errors a user can fix raise :class:`ConfigError` (CLI exit 2), :class:`NotFound` or :class:`Conflict`
(the API's 400, 404 and 409).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from batcher.errors import BatcherError, ConfigError
from batcher.handler import Handler
from batcher.jobs import validate_params
from batcher.store import Q

MAX_LOG_LINES = 1000


class NotFound(BatcherError):
    """No such job or run."""


class Conflict(BatcherError):
    """The request cannot apply in the current state: an ambiguous job type, a run already finished."""


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A database row as JSON-ready values (timestamps ISO-8601, UUIDs as text)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
        elif value is not None and not isinstance(value, str | int | float | bool | list | dict):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def job_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A job's row as shown to users (API config, ``batcher jobs``): a disabled job has no next run
    (null, even if an older version left one stored); a paused job keeps its next run."""
    out = dict(row)
    if not out.get("enabled"):
        out["next_run_at"] = None
    return out


async def get_job(pool: Any, name: str) -> dict[str, Any]:
    row = await pool.fetchrow(Q["get_job"], name)
    if row is None:
        raise NotFound(f"no job named {name!r}")
    return dict(row)


async def trigger_run(pool: Any, registry: Mapping[str, type[Handler]], job_name: str,
                      params: Mapping[str, Any]) -> tuple[int, bool]:
    """Queue a manual run (returns (run_id, existing)); the same params as a queued manual run → its id."""
    async with pool.acquire() as conn, conn.transaction():
        job = await conn.fetchrow(Q["lock_job"], job_name)
        if job is None:
            raise NotFound(f"no job named {job_name!r}")
        handler = registry.get(job["job_type"])
        if handler is not None:
            validate_params(handler, {**job["params"], **params}, job=job_name)
        existing = await conn.fetchval(Q["find_queued_manual"], job_name, dict(params))
        if existing is not None:
            return int(existing), True
        run_id = await conn.fetchval(Q["insert_queued_run"], job_name, job["job_type"], "manual",
                                     job["priority"], dict(params), 0.0, None, None, 1, 0, "manual")
        await conn.execute(Q["notify_wakeup"], "")
    return int(run_id), False


MAX_BACKFILL_DAYS = 366


def check_backfill_range(first: date, last: date, *, confirmed: bool) -> int:
    """The number of day windows of ``first..last``; reversed or unconfirmed over-long ranges: ConfigError."""
    if last < first:
        raise ConfigError(f"--to {last} is before --from {first}")
    days = (last - first).days + 1
    if days > MAX_BACKFILL_DAYS and not confirmed:
        raise ConfigError(f"{days} day windows is more than {MAX_BACKFILL_DAYS}; add --yes to queue them all")
    return days


async def queue_backfill(pool: Any, registry: Mapping[str, type[Handler]], job_name: str, first: date,
                         last: date, *, confirmed: bool = False) -> list[int]:
    """Queue one ``backfill`` run per day window (params ``start`` = ``end`` = the day, inclusive) with
    run-scoped checkpoints. Handlers that take no windows, reversed or over-long ranges: ConfigError."""
    days = check_backfill_range(first, last, confirmed=confirmed)
    async with pool.acquire() as conn, conn.transaction():
        job = await conn.fetchrow(Q["lock_job"], job_name)
        if job is None:
            raise NotFound(f"no job named {job_name!r}")
        handler = registry.get(job["job_type"])
        if handler is None or not handler.accepts_windows:
            raise ConfigError(f"job {job_name!r} (type {job['job_type']!r}) does not accept date windows, "
                              f"so it cannot be backfilled")
        ids = []
        for offset in range(days):
            day = (first + timedelta(days=offset)).isoformat()
            params = {"start": day, "end": day}
            validate_params(handler, {**job["params"], **params}, job=job_name)
            run_id = await conn.fetchval(Q["insert_queued_run"], job_name, job["job_type"], "backfill",
                                         job["priority"], params, 0.0, None, None, 1, 0, "backfill")
            ids.append(int(run_id))
        await conn.execute(Q["notify_wakeup"], "")
    return ids


async def cancel_run(pool: Any, run_id: int) -> str:
    """Ask a running run to stop (or cancel a queued one). Returns what happened."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(Q["cancel_queued"], run_id, "cancelled") is not None:
            return "cancelled"
        if await conn.fetchval(Q["request_cancel"], run_id, "cancelled") is not None:
            await conn.execute(Q["notify_wakeup"], f"cancel:{run_id}")
            return "cancel_requested"
        row = await conn.fetchrow(Q["get_run"], run_id)
    if row is None:
        raise NotFound(f"no run {run_id}")
    raise Conflict(f"run {run_id} already finished ({row['status']})")


async def set_paused(pool: Any, job_name: str, paused: bool) -> None:
    if await pool.fetchval(Q["set_paused"], job_name, paused) is None:
        raise NotFound(f"no job named {job_name!r}")
    if not paused:
        await pool.execute(Q["notify_wakeup"], "")


async def list_runs(pool: Any, *, job: str | None = None, status: str | None = None, limit: int = 20,
                    before_id: int | None = None) -> list[dict[str, Any]]:
    rows = await pool.fetch(Q[runs_query(job, status)], job, status, None, limit, before_id)
    return [jsonable(r) for r in rows]


async def show_run(pool: Any, run_id: int) -> dict[str, Any]:
    row = await pool.fetchrow(Q["get_run"], run_id)
    if row is None:
        raise NotFound(f"no run {run_id}")
    out = jsonable(row)
    out["logs"] = [jsonable(r) for r in await pool.fetch(Q["run_logs"], run_id, MAX_LOG_LINES)]
    return out


async def list_checkpoints(pool: Any, job: str | None) -> list[dict[str, Any]]:
    return [jsonable(r) for r in await pool.fetch(Q["list_checkpoints"], job)]


async def reset_checkpoints(pool: Any, job: str, stream: str | None) -> int:
    await get_job(pool, job)
    return len(await pool.fetch(Q["reset_checkpoints"], job, stream))


# --- admin API operations (batcher.api): job resolution, config edits, run pages, schedules, status -----

_SPEC_KEYS = ("enabled", "interval_minutes", "cron", "timezone", "queue", "priority", "max_retries",
              "max_abandons", "retry_base_seconds", "timeout_seconds", "overlap", "misfire_grace_seconds",
              "prefetch_batches", "paused")
_SCHEDULE_KEYS = ("enabled", "interval_minutes", "cron", "timezone")


async def resolve_job(pool: Any, job_type: str | None, job_name: str | None) -> str:
    """The job a request names: ``job_name`` exactly; else ``job_type`` as a job name first, else the one
    configured (not ad-hoc, not orphaned) job of that type. Several → :class:`Conflict`; none → NotFound."""
    if job_name is not None:
        return str((await get_job(pool, job_name))["job_name"])
    assert job_type is not None
    if await pool.fetchrow(Q["get_job"], job_type) is not None:
        return job_type
    names = [r["job_name"] for r in await pool.fetch(Q["jobs_of_type"], job_type)]
    if len(names) == 1:
        return str(names[0])
    if names:
        shown = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
        raise Conflict(f"job type {job_type!r} has {len(names)} jobs ({shown}): name one with jobName")
    raise NotFound(f"no job or job type named {job_type!r}")


def _merged_entry(row: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The job's row as a file entry with the changes applied (a new interval drops the cron and vice
    versa; params merge key by key, a None value removing the key)."""
    entry: dict[str, Any] = {"type": row["job_type"], **{k: row[k] for k in _SPEC_KEYS},
                             "depends_on": list(row["depends_on"] or []), "params": dict(row["params"])}
    for key, value in changes.items():
        if key == "params":
            merged = {**entry["params"], **value}
            entry["params"] = {k: v for k, v in merged.items() if v is not None}
        elif key in _SPEC_KEYS and value is not None:
            entry[key] = value
    if changes.get("interval_minutes") is not None:
        entry["cron"] = None
    if changes.get("cron") is not None:
        entry["interval_minutes"] = None
    return entry


def _first_run(spec: Any, now: datetime) -> datetime | None:
    """A rescheduled job: interval jobs are due now (then every N minutes from the new anchor, now);
    cron jobs at their next occurrence; jobs without a schedule of their own never."""
    from batcher.schedule import Schedule

    if spec.interval_minutes is not None:
        return now
    if spec.cron is None:
        return None
    nxt = Schedule(None, spec.cron, spec.timezone, now).next_after(now)
    if nxt is None:
        raise ConfigError("the cron expression never fires", key="cron")
    return nxt


async def update_job_config(pool: Any, registry: Mapping[str, type[Handler]], name: str,
                            changes: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """An API edit of a job, validated like a file entry (schedule, timezone, the handler's params, literal
    secrets rejected) and stored with source='api' and the file_hash kept, so the file sync leaves it
    alone until the file's entry changes (DESIGN §3). When enabled/schedule/timezone changed, the next
    run is recomputed from a new anchor. Returns the new row and whether it was rescheduled."""
    from batcher.jobs import parse_job

    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q["lock_job"], name)
        if row is None:
            raise NotFound(f"no job named {name!r}")
        spec = parse_job(name, _merged_entry(row, changes), registry)
        now = await conn.fetchval(Q["db_now"])
        rescheduled = any(getattr(spec, k) != row[k] for k in _SCHEDULE_KEYS)
        anchor, next_run = row["schedule_anchor"], row["next_run_at"]
        if not spec.enabled or spec.depends_on:
            next_run = None
        elif rescheduled:
            anchor, next_run = now, _first_run(spec, now)
        updated = await conn.fetchrow(
            Q["update_job_api"], name, spec.enabled, spec.interval_minutes, spec.cron, spec.timezone,
            spec.params, spec.queue, spec.priority, spec.max_retries, spec.max_abandons,
            spec.retry_base_seconds, spec.timeout_seconds, spec.overlap, spec.misfire_grace_seconds,
            spec.prefetch_batches, spec.paused, anchor, next_run)
        await conn.execute(Q["notify_wakeup"], "")
    return dict(updated), rescheduled


_RUNS_QUERIES = {(False, False): "page_runs", (True, False): "page_runs_by_job",
                 (False, True): "page_runs_by_status", (True, True): "page_runs_by_job_status"}


def runs_query(job: str | None, status: str | None) -> str:
    """The page_runs statement for this combination of filters (each has a static, index-friendly WHERE)."""
    return _RUNS_QUERIES[job is not None, status is not None]


async def page_runs(pool: Any, *, job: str | None, status: str | None, since: datetime | None, limit: int,
                    cursor: int | None) -> tuple[list[dict[str, Any]], int | None]:
    """One page of runs, newest first, and the cursor of the next page (None: this is the last)."""
    rows = [dict(r) for r in await pool.fetch(Q[runs_query(job, status)], job, status, since, limit + 1, cursor)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (int(rows[-1]["id"]) if more else None)


async def latest_run(pool: Any, job: str | None) -> dict[str, Any] | None:
    row = await pool.fetchrow(Q["latest_run"], job)
    return None if row is None else dict(row)


async def latest_run_per_job(pool: Any) -> dict[str, dict[str, Any]]:
    return {r["job_name"]: dict(r) for r in await pool.fetch(Q["latest_run_per_job"])}


async def job_history(pool: Any, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Every job's last ``runs`` runs that ran, newest first (one query; jobs without runs: [])."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in await pool.fetch(Q["job_history"], runs):
        points = out.setdefault(row["job_name"], [])
        if row["id"] is not None:
            points.append(dict(row))
    return out


async def next_occurrences(pool: Any, name: str, n: int) -> tuple[dict[str, Any], list[datetime]]:
    """The job and its next ``n`` occurrences (from its next_run_at, else from now; none without a
    schedule of its own)."""
    from batcher.materialize import schedule_of

    job = await get_job(pool, name)
    if not job["interval_minutes"] and not job["cron"]:
        return job, []
    schedule = schedule_of(job)
    first = job["next_run_at"] or schedule.next_after(await pool.fetchval(Q["db_now"]))
    times = [] if first is None else [first]
    while times and len(times) < n:
        nxt = schedule.next_after(times[-1], times[-1])
        if nxt is None:
            break
        times.append(nxt)
    return job, times


async def scheduling_overview(pool: Any) -> dict[str, Any]:
    """Jobs, timers, last starts, running jobs and registered workers, for the status endpoint."""
    from batcher.worker import LOCK_CLASS

    jobs = await pool.fetch(Q["status_jobs"])
    running = await pool.fetch(Q["running_job_names"])
    workers = await pool.fetch(Q["list_workers"], LOCK_CLASS)
    return {"registered_jobs": [r["job_name"] for r in jobs],
            "active_job_timers": sum(1 for r in jobs if r["timer"]),
            "last_run_times": {r["job_name"]: r["last_run_at"] for r in jobs},
            "running_jobs": [r["job_name"] for r in running],
            "workers": [{**dict(w), "queues": list(w["queues"]) if w["queues"] is not None else None}
                        for w in workers]}
