"""The ``batcher`` command line (DESIGN §9).

Exit codes: 0 success; 1 a run failed, was cancelled, the job is busy, or a named job/run does not exist;
2 a usage or configuration error (one line on stderr). Every argument is checked here, before any
command connects to a database: numbers against their ranges (ids 1..2^63-1, ``--limit`` 1..500),
names and texts for length and control characters, dates, and the combinations (:func:`check_args`).
Commands that run a job print progress on stderr and a JSON summary as the last stdout line. An
unexpected exception is one ``batcher: unexpected error`` line (exit 1); ``BATCHER_DEBUG=1`` shows its
traceback. Imports are lazy so a command starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, date, datetime
from typing import Any, NoReturn

from batcher.cliutil import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MAX_NEXT,
    UsageError,
    _params,
    _print_json,
    json_default,
)
from batcher.extension import MAX_NAME, name_arg
from batcher.extension import shown as _shown

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "MAX_NAME", "MAX_NEXT", "UsageError", "_params", "_print_json",
           "build_parser", "check_args", "json_default", "main", "name_arg", "parse_param"]
from batcher.version import VersionAction

BIGINT_MAX = 2**63 - 1  # run ids are PostgreSQL bigints
MAX_LIMIT = 500  # as the admin API's ``limit``
MAX_PARAM = 10_000  # one --param KEY=VALUE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _storable(value: Any) -> bool:
    """Whether jsonb can hold ``value``: no NUL in its strings, no infinite or NaN number."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    return True


def parse_param(text: str) -> tuple[str, Any]:
    """argparse type of ``--param``: ``key=value``; the value is read as JSON when it parses (numbers,
    booleans, null), else a string. Keys are names; values have no NUL and fit in 10,000 characters."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {_shown(text)}")
    if len(text) > MAX_PARAM:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is longer than {MAX_PARAM} characters")
    name_arg(key.strip())
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{_shown(text)}: the JSON value is nested too deeply") from None
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        value = "\x00"  # a lone surrogate (undecodable argv bytes): refused like a NUL
    if not _storable(value):
        raise argparse.ArgumentTypeError(f"{_shown(text)}: the value must not contain NUL, invalid Unicode or "
                                         "an infinite number")
    return key.strip(), value


def int_range(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer in ``low..high`` (one message naming the range)."""
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high:,}, got {_shown(text)}")
        return value

    return parse


run_id_arg = int_range(1, BIGINT_MAX)
limit_arg = int_range(1, MAX_LIMIT)


def _iso_date(text: str) -> date:
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-01-31, got {_shown(text)}") from None


def _before(text: str) -> datetime:
    """``--before``: a date (midnight UTC) or an ISO timestamp (UTC unless it names an offset)."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        if not 16 <= len(text) <= 40:
            raise ValueError(text)
        at = datetime.fromisoformat(text)
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        at.astimezone(UTC)  # OverflowError at the calendar's ends (0001-01-01T00:00+01:00)
        return at
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a date like 2026-01-31 (or an ISO timestamp), got "
                                         f"{_shown(text)}") from None


def _add_param(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", type=parse_param, metavar="KEY=VALUE",
                   help="a handler param (repeatable; see `batcher types`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="batcher", description="Async scheduler daemon for data-ingestion jobs.")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser("run", help="run the daemon: schedule and run jobs until SIGTERM")
    p = sub.add_parser("run-job", help="run one run of a job (or ad-hoc job type) in the foreground")
    p.add_argument("job", type=name_arg, help="a configured job name, or a handler type for an ad-hoc job")
    _add_param(p)
    p.add_argument("--job-name", type=name_arg, help="name of the ad-hoc job (its own checkpoints)")
    p.add_argument("--no-wait", action="store_true", help="exit 1 instead of waiting for a busy job")
    p = sub.add_parser("trigger", help="queue a manual run")
    p.add_argument("job", type=name_arg)
    _add_param(p)
    p.add_argument("--wait", action="store_true", help="follow the run; exit by its status")
    p = sub.add_parser("jobs", help="list jobs, or `jobs sync`: write batcher.toml's jobs into the database")
    p.add_argument("job", nargs="?", type=name_arg,
                   help="one job to show, or `sync` to sync the file's jobs as the daemon does at start "
                        "(prints what changed)")
    p.add_argument("--next", type=run_id_arg, metavar="N",
                   help=f"print the next N fire times of JOB (at most {MAX_NEXT})")
    p = sub.add_parser("runs", help="list runs, or `runs show ID`")
    p.add_argument("show", nargs="?", choices=["show"])
    p.add_argument("run_id", nargs="?", type=run_id_arg)
    p.add_argument("--job", type=name_arg)
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled", "skipped"])
    p.add_argument("--limit", type=limit_arg, default=20, help=f"1..{MAX_LIMIT} (default 20)")
    for name in ("pause", "resume"):
        sub.add_parser(name, help=f"{name} a job").add_argument("job", type=name_arg)
    sub.add_parser("cancel", help="cancel a queued or running run").add_argument("run_id", type=run_id_arg)
    p = sub.add_parser("backfill", help="queue one run per day window of a date range")
    p.add_argument("job", type=name_arg)
    p.add_argument("--from", dest="date_from", required=True, type=_iso_date, metavar="DATE")
    p.add_argument("--to", dest="date_to", required=True, type=_iso_date, metavar="DATE")
    p.add_argument("--yes", action="store_true", help="confirm a range of more than 366 days")
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("health", help="check PostgreSQL, Redis (and MongoDB when configured)")
    sub.add_parser("types", help="list the job types and their params").add_argument(
        "--json", action="store_true", help="one JSON line per job type instead of a table")
    cp = sub.add_parser("checkpoints", help="show or reset checkpoints").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    cp.add_parser("show").add_argument("job", nargs="?", type=name_arg)
    p = cp.add_parser("reset")
    p.add_argument("job", type=name_arg)
    p.add_argument("--stream", type=name_arg)
    p.add_argument("--yes", action="store_true", help="confirm")
    dl = sub.add_parser("dead-letters", help="list, replay or purge dead letters").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    p = dl.add_parser("list")
    p.add_argument("--job", type=name_arg)
    p.add_argument("--limit", type=limit_arg, default=50, help=f"1..{MAX_LIMIT} (default 50)")
    p = dl.add_parser("replay", help="replay as a run of the job (waits while a run of the job is live)")
    p.add_argument("job", type=name_arg)
    p.add_argument("--no-wait", action="store_true", help="exit 1 instead of waiting while the job runs")
    p = dl.add_parser("purge")
    p.add_argument("job", type=name_arg)
    p.add_argument("--before", type=_before, metavar="DATE",
                   help="only dead letters created before this date (YYYY-MM-DD, UTC) or ISO timestamp")
    from batcher.handlercommands import add_handler_commands

    add_handler_commands(sub)  # the commands handlers contribute (batcher.extension.CliCommand)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """The checks that combine arguments, made before a command connects anywhere (UsageError, exit 2)."""
    command, action = args.command, getattr(args, "action", None)
    if command == "runs" and args.show and args.run_id is None:
        raise UsageError("runs show needs a RUN_ID")
    if command == "runs" and not args.show and args.run_id is not None:
        raise UsageError("runs: a RUN_ID goes with `runs show RUN_ID`")
    if command == "runs" and args.show and (args.job is not None or args.status is not None):
        raise UsageError("runs show RUN_ID takes no --job or --status (they filter the list of runs)")
    if command == "jobs" and args.next and (not args.job or args.job == "sync"):
        raise UsageError("--next needs a JOB" if not args.job else "jobs sync takes no --next")
    if command == "checkpoints" and action == "reset" and not args.yes:
        raise UsageError(f"checkpoints reset {args.job}: this discards stored cursors; add --yes to confirm")
    if command == "backfill":
        from batcher.commands import check_backfill_range

        check_backfill_range(args.date_from, args.date_to, confirmed=args.yes)


def _fail(message: str, code: int) -> int:
    line = " ".join(message.split()) or "failed"
    print(f"batcher: {line}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    from batcher.errors import ConfigError

    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("missing command (see `batcher --help`)")
        check_args(args)
    except (UsageError, ConfigError) as exc:
        return _fail(str(exc).removeprefix("batcher: ").removeprefix("batcher "), EXIT_USAGE)
    except SystemExit as exc:  # --help / --version: argparse printed its text; return, don't exit
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from batcher.clicommands import COMMANDS
    from batcher.errors import BatcherError, ConfigError, PermanentError

    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = \
        getattr(args, "handler_command", None) or COMMANDS[args.command]
    try:
        return asyncio.run(handler(args))
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (PermanentError, BatcherError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:  # the last resort: one line, never a traceback (BATCHER_DEBUG shows it)
        from batcher.settings import debug_enabled

        if debug_enabled():
            raise
        import structlog

        structlog.get_logger("batcher.cli").debug("unexpected_error", exc_info=True)
        return _fail(f"unexpected error: {type(exc).__name__}: {exc} (BATCHER_DEBUG=1 shows the traceback)",
                     EXIT_FAILED)
