"""``batcher aggregate`` and ``batcher aggregate-status``: the usage-aggregation commands (issue 9),
contributed by :class:`handlers.usage.UsageAggregationHandler` through ``cli_commands`` (issue 18).

Owns their argument parsing and checks, the choice of the configured ``usage_aggregation`` job, and the
status report. It mirrors the original tool's commands:

- ``batcher aggregate`` (yesterday, UTC), ``--date D``, ``--from D1 --to D2`` (inclusive; more than 366
  days needs ``--yes``), ``--merchant M``: one run of the configured ``usage_aggregation`` job through the
  runner, exactly like ``run-job`` (a run row, waiting while a live worker runs the job, so it never
  overlaps a scheduled aggregation; a killed run is taken over and resumed by the next one with the same
  params). The JSON summary is the last stdout line; exit 0 succeeded, 1 failed/cancelled/busy, 2 bad
  input or not exactly one such job (``--job NAME`` picks one of several).
- ``batcher aggregate-status D``: a plain read, no run. Per metric: live keys in Redis, rows in
  PostgreSQL, keys without a row (``missing``), keys whose row holds another value (``different``), rows
  whose key is gone (``expired``, reported apart: keys expire by the platform's TTL) and the last
  ``aggregated_at``. Exit 1 only when a live key and its row differ.

Only the public ``batcher`` API is used: services and runs come through the command's context.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from typing import Any

from batcher import CliCommand, CommandContext, ConfigError
from batcher.extension import EXIT_FAILED, EXIT_OK, name_arg
from handlers.usage_keys import UsageReader, key_date

UsageError = ConfigError  # a bad command line: exit 2 with the message

USAGE_TYPE = "usage_aggregation"
MAX_DAYS_WITHOUT_YES = 366
MAX_EXAMPLES = 20
COUNTS = ("keys", "rows", "missing", "different", "expired")

#: The rows of one usage date (optionally one merchant), for aggregate-status.
SQL_USAGE_ROWS = """
SELECT merchant_id, metric_type, value, aggregated_at FROM merchant_usage
WHERE usage_date = $1 AND ($2::text IS NULL OR merchant_id = $2)
"""

#: This run's own counters: keys checked (valid and malformed) and rows handed to the sink.
SQL_RUN_COUNTS = "SELECT items_checked, records FROM batch_runs WHERE id = $1"


def usage_date(text: str) -> dt.date:
    """argparse type: a real ``YYYY-MM-DD`` date, else a message naming the value and the problem."""
    try:
        if len(text) != 10:
            raise ValueError("expected YYYY-MM-DD")
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid date (YYYY-MM-DD): {exc}") from None


def add_aggregate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date", type=usage_date, metavar="D", help="one UTC date (default: yesterday)")
    p.add_argument("--from", dest="start", type=usage_date, metavar="D1", help="first date (with --to)")
    p.add_argument("--to", dest="end", type=usage_date, metavar="D2", help="last date, inclusive")
    p.add_argument("--merchant", type=name_arg, help="only this merchant id")
    p.add_argument("--yes", action="store_true", help=f"confirm a range over {MAX_DAYS_WITHOUT_YES} days")
    p.add_argument("--job", type=name_arg, help="the usage_aggregation job to run when several are configured")
    p.add_argument("--no-wait", action="store_true", help="exit 1 instead of waiting for a busy job")


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("date", type=usage_date, metavar="D", help="the UTC date to compare")
    p.add_argument("--merchant", type=name_arg, help="only this merchant id")
    p.add_argument("--job", type=name_arg, help="the usage_aggregation job whose key_prefix to use")


def run_params(args: argparse.Namespace, today: dt.date | None = None) -> dict[str, Any]:
    """The run's params from the command line; bad combinations raise UsageError (exit 2)."""
    if args.date is not None and (args.start is not None or args.end is not None):
        raise UsageError("aggregate: --date cannot be combined with --from/--to")
    if (args.start is None) != (args.end is None):
        raise UsageError("aggregate: --from and --to go together")
    check_merchant("aggregate", args.merchant)
    params: dict[str, Any] = {}
    if args.start is not None:
        if args.start > args.end:
            raise UsageError(f"aggregate: --from {args.start} is after --to {args.end}")
        days = (args.end - args.start).days + 1
        if days > MAX_DAYS_WITHOUT_YES and not args.yes:
            raise UsageError(f"aggregate: --from {args.start} --to {args.end} spans {days} days (more than "
                             f"{MAX_DAYS_WITHOUT_YES}); add --yes to run it")
        params.update(start=args.start.isoformat(), end=args.end.isoformat())
    else:
        yesterday = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=1)
        params["date"] = (args.date or yesterday).isoformat()
    if args.merchant is not None:
        params["merchant"] = args.merchant
    return params


def check_merchant(command: str, merchant: str | None) -> None:
    """A merchant id is non-empty and has no ':' (it separates the key's parts)."""
    if merchant is not None and (not merchant or ":" in merchant):
        raise UsageError(f"{command}: --merchant {merchant!r} is not a merchant id (empty, or contains ':')")


def pick_job(jobs: Mapping[str, Any], wanted: str | None) -> str:
    """The one job to use; none, several (without ``--job``) or an unknown ``--job`` is a ConfigError."""
    if wanted is not None:
        if wanted not in jobs:
            raise ConfigError(f"--job {wanted!r} is not a configured {USAGE_TYPE} job "
                              f"(configured: {', '.join(jobs) or 'none'})")
        return wanted
    if not jobs:
        raise ConfigError(f"no {USAGE_TYPE} job is configured: add one to batcher.toml "
                          f"([jobs.usage] type = \"{USAGE_TYPE}\"), then start the daemon or run "
                          f"`batcher jobs sync`")
    if len(jobs) > 1:
        raise ConfigError(f"several {USAGE_TYPE} jobs are configured ({', '.join(jobs)}); "
                          "pick one with --job")
    return next(iter(jobs))


async def cmd_aggregate(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``batcher aggregate``: one run of the configured usage job; prints its JSON summary."""
    params = run_params(args)
    async with ctx.services(start_embedded=True, schema="migrate") as services:
        stored = await services.stored_jobs(USAGE_TYPE, args.job)
        job = pick_job(stored, args.job)
        summary = await services.run_job(job, params, wait=not args.no_wait)
        row = await services.pool.fetchrow(SQL_RUN_COUNTS, summary["run_id"])
    checked = int(row["items_checked"]) if row else 0
    summary.update(params=params, keys=checked, malformed_keys=max(checked - int(summary["records"]), 0))
    ctx.print_json(summary)
    return EXIT_OK if summary["status"] == "succeeded" else EXIT_FAILED


async def cmd_aggregate_status(args: argparse.Namespace, ctx: CommandContext) -> int:
    """``batcher aggregate-status D``: Redis vs PostgreSQL for one date; exit 1 when values differ."""
    check_merchant("aggregate-status", args.merchant)
    async with ctx.services(start_embedded=False, schema="check") as services:
        jobs = await services.stored_jobs(USAGE_TYPE, strict=False)
        prefix = status_prefix(jobs, args.job)
        redis = services.redis_client(socket_timeout=30.0)
        try:
            live, malformed = await read_live(redis, args.date, prefix, args.merchant)
        finally:
            await redis.aclose()
        rows = await services.pool.fetch(SQL_USAGE_ROWS, args.date, args.merchant)
    report = compare(live, [dict(r) for r in rows])
    report = {"date": args.date.isoformat(), "key_prefix": prefix, "merchant": args.merchant,
              "malformed_keys": malformed, **report}
    ctx.print_json(report)
    return EXIT_FAILED if report["totals"]["different"] else EXIT_OK


def status_prefix(jobs: Mapping[str, Mapping[str, Any]], wanted: str | None) -> str:
    """The key prefix to compare: ``--job``'s, else the configured jobs' one prefix, else ``usage``."""
    if wanted is not None:
        return str(jobs[pick_job(jobs, wanted)].get("key_prefix", "usage"))
    prefixes = {str(params.get("key_prefix", "usage")) for params in jobs.values()} or {"usage"}
    if len(prefixes) > 1:
        raise ConfigError(f"the {USAGE_TYPE} jobs use several key prefixes ({', '.join(sorted(prefixes))}); "
                          "pick a job with --job")
    return prefixes.pop()


async def read_live(redis: Any, day: dt.date, prefix: str, merchant: str | None,
                    ) -> tuple[dict[tuple[str, str], int], int]:
    """The valid counters of ``day`` ((merchant, metric) → value) and the count of its malformed keys."""
    reader = UsageReader(redis, [day], key_prefix=prefix, merchant=merchant)
    live: dict[tuple[str, str], int] = {}
    malformed = 0
    async for page in reader.pages():
        live.update(((m, metric), value) for m, _, metric, value in page.records)
        malformed += sum(1 for r in page.rejected if key_date(r.raw, prefix) == day)
    return live, malformed


def compare(live: Mapping[tuple[str, str], int], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric and in total: keys, rows, missing, different, expired, last aggregated_at; examples."""
    stored = {(r["merchant_id"], r["metric_type"]): r for r in rows}
    metrics: dict[str, dict[str, Any]] = {}

    def entry(metric: str) -> dict[str, Any]:
        return metrics.setdefault(metric, {**dict.fromkeys(COUNTS, 0), "last_aggregated_at": None})

    examples: list[dict[str, Any]] = []
    for (merchant, metric), value in live.items():
        e = entry(metric)
        e["keys"] += 1
        row = stored.get((merchant, metric))
        if row is None:
            e["missing"] += 1
        elif row["value"] != value:
            e["different"] += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append({"merchant": merchant, "metric": metric, "redis": value,
                                 "postgres": row["value"]})
    for (merchant, metric), row in stored.items():
        e = entry(metric)
        e["rows"] += 1
        e["expired"] += (merchant, metric) not in live
        at = row["aggregated_at"]
        e["last_aggregated_at"] = max(filter(None, (e["last_aggregated_at"], at)), default=None)
    totals = {k: sum(m[k] for m in metrics.values()) for k in COUNTS}
    in_sync = not totals["different"] and not totals["missing"]
    return {"metrics": dict(sorted(metrics.items())), "totals": totals, "in_sync": in_sync,
            "differences": examples}


USAGE_COMMANDS = (
    CliCommand("aggregate", "copy usage counters from Redis to PostgreSQL (a run of the configured "
                            "usage_aggregation job)", add_aggregate_arguments, cmd_aggregate),
    CliCommand("aggregate-status", "compare Redis counters of a date with merchant_usage", add_status_arguments,
               cmd_aggregate_status),
)
