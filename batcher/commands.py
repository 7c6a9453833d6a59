"""Operations on jobs and runs shared by the CLI and the admin API: trigger, cancel, pause, list, show.

Each takes the pool and plain values and returns plain data (JSON-ready dicts), so both front ends stay
thin. Errors a user can fix raise :class:`ConfigError` (CLI exit 2) or :class:`NotFound`.
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
        await conn.execute(Q["set_root_self"], run_id)
        await conn.execute(Q["notify_wakeup"], "")
    return int(run_id), False


MAX_BACKFILL_DAYS = 366


async def queue_backfill(pool: Any, registry: Mapping[str, type[Handler]], job_name: str, first: date,
                         last: date, *, confirmed: bool = False) -> list[int]:
    """Queue one ``backfill`` run per day window (params ``start`` = ``end`` = the day, inclusive) with
    run-scoped checkpoints. Handlers that take no windows, reversed or over-long ranges: ConfigError."""
    if last < first:
        raise ConfigError(f"--to {last} is before --from {first}")
    days = (last - first).days + 1
    if days > MAX_BACKFILL_DAYS and not confirmed:
        raise ConfigError(f"{days} day windows is more than {MAX_BACKFILL_DAYS}; add --yes to queue them all")
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
            await conn.execute(Q["set_root_self"], run_id)
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
    raise BatcherError(f"run {run_id} already finished ({row['status']})")


async def set_paused(pool: Any, job_name: str, paused: bool) -> None:
    if await pool.fetchval(Q["set_paused"], job_name, paused) is None:
        raise NotFound(f"no job named {job_name!r}")
    if not paused:
        await pool.execute(Q["notify_wakeup"], "")


async def list_runs(pool: Any, *, job: str | None = None, status: str | None = None, limit: int = 20,
                    before_id: int | None = None) -> list[dict[str, Any]]:
    rows = await pool.fetch(Q["list_runs"], job, status, limit, before_id)
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
