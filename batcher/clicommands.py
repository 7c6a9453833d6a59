"""The implementations of the ``batcher`` subcommands (parsing lives in :mod:`batcher.cli`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from batcher.app import Config, load_config, open_services, run_daemon
from batcher.cliutil import EXIT_FAILED, EXIT_OK, MAX_NEXT, UsageError, _params, _print_json
from batcher.commands import (
    NotFound,
    cancel_run,
    get_job,
    job_view,
    jsonable,
    list_checkpoints,
    list_runs,
    reset_checkpoints,
    set_paused,
    show_run,
    trigger_run,
)
from batcher.environ import secret_fields
from batcher.jobs import require_job_row
from batcher.logs import configure_logging
from batcher.progress import Progress, watch_execution
from batcher.store import Q

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
FINAL = {"succeeded", "failed", "cancelled", "skipped"}


def _config() -> Config:
    config = load_config()
    configure_logging(config.settings.log.format, config.settings.log.level)
    return config


async def cmd_run(args: argparse.Namespace) -> int:
    return await run_daemon(load_config())


def _status_code(status: str) -> int:
    return EXIT_OK if status == "succeeded" else EXIT_FAILED


async def cmd_run_job(args: argparse.Namespace) -> int:
    from batcher.runjob import JobBusy, run_foreground

    config = _config()
    params = _params(args.param)
    async with open_services(config, start_embedded=True, http=True) as services:
        secrets = await _literal_secrets(services.pool, config, args, params)
        try:
            async with Progress() as progress:
                summary = await run_foreground(services, config, args.job, job_name=args.job_name,
                                               params=params, literal_secrets=secrets, wait=not args.no_wait,
                                               on_start=watch_execution(progress))
        except JobBusy as exc:
            print(f"batcher: {exc}", file=sys.stderr)
            return EXIT_FAILED
    _print_json(summary)
    return _status_code(summary["status"])


async def _literal_secrets(pool: Any, config: Config, args: argparse.Namespace,
                           params: dict[str, Any]) -> dict[str, str]:
    """Move the handler's secret fields out of ``params`` (registered for redaction, never stored). The
    handler is JOB's as batch_config has it (not the caller's file), else JOB as a handler type."""
    row = None if args.job_name else await pool.fetchrow(Q["get_job"], args.job)
    handler_type = row["job_type"] if row is not None else args.job
    secrets: dict[str, str] = {}
    if handler_type in config.registry:
        for field in secret_fields(config.registry[handler_type].Params):
            if field in params:
                secrets[field] = str(params.pop(field))
    from batcher.logs import register_secret

    for value in secrets.values():
        register_secret(value)
    return secrets


async def cmd_trigger(args: argparse.Namespace) -> int:
    config = _config()
    async with open_services(config, start_embedded=args.wait) as services:
        await require_job_row(services.pool, config.jobs, args.job)
        run_id, existing = await trigger_run(services.pool, config.registry, args.job, _params(args.param))
        if not args.wait:
            _print_json({"run_id": run_id, "job": args.job, "status": "queued", "existing": existing})
            return EXIT_OK
        async with Progress() as progress:
            row = await _follow(services.pool, run_id, progress)
    _print_json(_run_summary(row))
    return _status_code(row["status"])


async def _follow(pool: Any, run_id: int, progress: Progress) -> dict[str, Any]:
    """Poll a run (and its retries) until the chain reaches a final state, showing its progress."""
    current = run_id
    latest: dict[str, Any] = {}
    progress.watch(lambda: (current, latest["job_name"], {**latest["progress"], "records": latest["records"]}))
    while True:
        row = await pool.fetchrow(Q["get_run"], current)
        latest.update(row)
        if row["status"] in FINAL:
            retry = await pool.fetchval(Q["retry_of"], current)
            if retry is None:
                return dict(row)
            current = retry
        await asyncio.sleep(0.5)


def _run_summary(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("job_name", "status", "reason", "records", "dead_letters", "api_calls", "ingress_bytes",
            "runtime_ms", "errors")
    out = {"run_id": row["id"], **{k: row.get(k) for k in keys}}
    out["job"] = out.pop("job_name")
    out["dead_letter_reasons"] = list((row.get("progress") or {}).get("dead_letter_reasons") or [])
    return out


async def cmd_jobs(args: argparse.Namespace) -> int:
    config = _config()
    if args.job == "sync":
        return await _sync_jobs(config, args)
    async with open_services(config, start_embedded=False, schema="check") as services:
        if args.next:
            return await _print_next(services.pool, args.job, args.next)
        rows = [await get_job(services.pool, args.job)] if args.job else \
            [dict(r) for r in await services.pool.fetch(Q["list_jobs"])]
    for row in map(job_view, rows):
        schedule = f"every {row['interval_minutes']} min" if row["interval_minutes"] else (
            f"cron {row['cron']} {row['timezone']}" if row["cron"] else
            f"after {','.join(row['depends_on'])}" if row["depends_on"] else "manual")
        _print_json({"job": row["job_name"], "type": row["job_type"], "enabled": row["enabled"],
                     "paused": row["paused"], "schedule": schedule, "next_run_at": row["next_run_at"],
                     "last_success_at": row["last_success_at"], "queue": row["queue"],
                     "orphaned": row["orphaned"], "adhoc": row["adhoc"]})
    return EXIT_OK


async def _sync_jobs(config: Config, args: argparse.Namespace) -> int:
    """``batcher jobs sync``: what the daemon does at start, on demand (a bad file is exit 2 at load)."""
    from batcher.jobs import sync_jobs

    async with open_services(config, start_embedded=True) as services:
        report = await sync_jobs(services.pool, config.jobs, config.settings.jobs, config.registry)
        await services.pool.execute(Q["notify_wakeup"], "")
    _print_json(report)
    return EXIT_OK


async def _print_next(pool: Any, job: str, n: int) -> int:
    from batcher.materialize import schedule_of

    row = await get_job(pool, job)
    if not row["interval_minutes"] and not row["cron"]:
        raise UsageError(f"job {job!r} has no schedule of its own")
    if n > MAX_NEXT:
        print(f"batcher: --next {n} is more than {MAX_NEXT}: printing the next {MAX_NEXT}", file=sys.stderr,
              flush=True)
        n = MAX_NEXT
    schedule = schedule_of(row)
    at = row["next_run_at"] or datetime.now(UTC)
    times = [at]
    while len(times) < n:
        nxt = schedule.next_after(times[-1], times[-1])
        if nxt is None:
            break
        times.append(nxt)
    for t in times:
        print(t.isoformat())
    return EXIT_OK


async def cmd_runs(args: argparse.Namespace) -> int:
    config = _config()
    async with open_services(config, start_embedded=False, schema="check") as services:
        if args.show:
            _print_json(await show_run(services.pool, args.run_id))
            return EXIT_OK
        if args.job is not None:
            await get_job(services.pool, args.job)  # a misspelled name is "no job named", not "no runs"
        for row in await list_runs(services.pool, job=args.job, status=args.status, limit=args.limit):
            _print_json({k: row[k] for k in ("id", "job_name", "trigger", "status", "reason", "attempt",
                                             "queued_at", "started_at", "finished_at", "runtime_ms",
                                             "records", "dead_letters")})
    return EXIT_OK


async def _pause(args: argparse.Namespace, paused: bool) -> int:
    config = _config()
    async with open_services(config, start_embedded=False, schema="check") as services:
        await set_paused(services.pool, args.job, paused)
    _print_json({"job": args.job, "paused": paused})
    return EXIT_OK


async def cmd_pause(args: argparse.Namespace) -> int:
    return await _pause(args, True)


async def cmd_resume(args: argparse.Namespace) -> int:
    return await _pause(args, False)


async def cmd_cancel(args: argparse.Namespace) -> int:
    config = _config()
    async with open_services(config, start_embedded=False, schema="check") as services:
        result = await cancel_run(services.pool, args.run_id)
    _print_json({"run_id": args.run_id, "result": result})
    return EXIT_OK


async def cmd_backfill(args: argparse.Namespace) -> int:
    from batcher.commands import queue_backfill

    config = _config()
    async with open_services(config, start_embedded=False) as services:
        await require_job_row(services.pool, config.jobs, args.job)
        ids = await queue_backfill(services.pool, config.registry, args.job, args.date_from, args.date_to,
                                   confirmed=args.yes)
    _print_json({"job": args.job, "queued": len(ids), "run_ids": ids})
    return EXIT_OK


async def cmd_migrate(args: argparse.Namespace) -> int:
    config = _config()
    async with open_services(config, start_embedded=True, schema="none") as services:
        from batcher import store

        async with services.pool.acquire() as conn:
            applied = await store.migrate(conn)
            version = await store.schema_version(conn)
    _print_json({"applied": applied, "schema_version": version})
    return EXIT_OK


async def cmd_health(args: argparse.Namespace) -> int:
    from batcher.health import check_health

    config = _config()
    report = await check_health(config.settings)
    _print_json(report)
    return EXIT_OK if all(v["ok"] for v in report.values()) else EXIT_FAILED


async def cmd_types(args: argparse.Namespace) -> int:
    """``batcher types``: every job type and its params (no database needed)."""
    from batcher.handlertypes import describe_handlers, render_table
    from batcher.registry import load_registry

    handlers = describe_handlers(load_registry())
    if args.json:
        for entry in handlers:
            _print_json(entry)
    else:
        print(render_table(handlers), flush=True)
    return EXIT_OK


async def cmd_checkpoints(args: argparse.Namespace) -> int:
    config = _config()
    async with open_services(config, start_embedded=False, schema="check") as services:
        if args.action == "show":
            if args.job is not None:
                await get_job(services.pool, args.job)
            for row in await list_checkpoints(services.pool, args.job):
                _print_json(row)
            return EXIT_OK
        removed = await reset_checkpoints(services.pool, args.job, args.stream)
    _print_json({"job": args.job, "stream": args.stream, "removed": removed})
    return EXIT_OK


async def cmd_dead_letters(args: argparse.Namespace) -> int:
    from batcher import deadletters

    config = _config()
    async with open_services(config, start_embedded=False, schema="check") as services:
        pool = services.pool
        if args.action == "list":
            if args.job is not None:
                await get_job(pool, args.job)
            for row in await deadletters.list_dead_letters(pool, args.job, args.limit):
                _print_json(jsonable(row))
            return EXIT_OK
        job = await get_job(pool, args.job)
        if args.action == "purge":
            purged = await deadletters.purge_dead_letters(pool, args.job, args.before)
            _print_json({"job": args.job, "purged": purged})
            return EXIT_OK
        return await _replay(services, config, job, wait=not args.no_wait)
    return EXIT_OK


async def _replay(services: Any, config: Config, job: dict[str, Any], *, wait: bool) -> int:
    """Replay as a run of the job (never beside a live one): busy with --no-wait → exit 1."""
    from batcher.replay import replay_as_run
    from batcher.runjob import JobBusy

    handler = config.registry[job["job_type"]]
    try:
        result = await replay_as_run(services, job["job_name"], {s.name: s for s in handler.streams}, wait=wait)
    except JobBusy as exc:
        print(f"batcher: cannot replay now: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print_json(result)
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "run": cmd_run, "run-job": cmd_run_job, "trigger": cmd_trigger, "jobs": cmd_jobs, "runs": cmd_runs,
    "pause": cmd_pause, "resume": cmd_resume, "cancel": cmd_cancel, "migrate": cmd_migrate,
    "backfill": cmd_backfill,
    "health": cmd_health, "types": cmd_types, "checkpoints": cmd_checkpoints, "dead-letters": cmd_dead_letters,
}

__all__ = ["COMMANDS", "NotFound"]
