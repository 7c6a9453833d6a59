"""The ``batcher`` command line (DESIGN §9).

Exit codes: 0 success; 1 a run failed, was cancelled, or the job is busy; 2 a usage or configuration
error (one line on stderr). Commands that run a job print progress (logs) on stderr and a JSON summary as
the last stdout line. Imports are lazy so a command starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import date
from typing import Any, NoReturn

from batcher import __version__
from batcher.cliutil import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, _params, _print_json, parse_param

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UsageError", "_params", "_print_json", "build_parser",
           "main", "parse_param"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-01-31, got {text!r}") from None


def _add_param(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a handler param (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="batcher", description="Async scheduler daemon for data-ingestion jobs.")
    parser.add_argument("--version", action="version", version=f"batcher {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser("run", help="run the daemon: schedule and run jobs until SIGTERM")
    p = sub.add_parser("run-job", help="run one run of a job (or ad-hoc job type) in the foreground")
    p.add_argument("job", help="a configured job name, or a handler type for an ad-hoc job")
    _add_param(p)
    p.add_argument("--job-name", help="name of the ad-hoc job (its own checkpoints)")
    p.add_argument("--no-wait", action="store_true", help="exit 1 instead of waiting for a busy job")
    p = sub.add_parser("trigger", help="queue a manual run")
    p.add_argument("job")
    _add_param(p)
    p.add_argument("--wait", action="store_true", help="follow the run; exit by its status")
    p = sub.add_parser("jobs", help="list jobs, or `jobs sync`: write batcher.toml's jobs into the database")
    p.add_argument("job", nargs="?", help="one job to show, or `sync` to sync the file's jobs as the daemon "
                                          "does at start (prints what changed)")
    p.add_argument("--next", type=_positive, metavar="N", help="print the next N fire times of JOB")
    p = sub.add_parser("runs", help="list runs, or `runs show ID`")
    p.add_argument("show", nargs="?", choices=["show"])
    p.add_argument("run_id", nargs="?", type=_positive)
    p.add_argument("--job")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled", "skipped"])
    p.add_argument("--limit", type=_positive, default=20)
    for name in ("pause", "resume"):
        sub.add_parser(name, help=f"{name} a job").add_argument("job")
    sub.add_parser("cancel", help="cancel a queued or running run").add_argument("run_id", type=_positive)
    p = sub.add_parser("backfill", help="queue one run per day window of a date range")
    p.add_argument("job")
    p.add_argument("--from", dest="date_from", required=True, type=_iso_date, metavar="DATE")
    p.add_argument("--to", dest="date_to", required=True, type=_iso_date, metavar="DATE")
    p.add_argument("--yes", action="store_true", help="confirm a range of more than 366 days")
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("health", help="check PostgreSQL, Redis (and MongoDB when configured)")
    cp = sub.add_parser("checkpoints", help="show or reset checkpoints").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    cp.add_parser("show").add_argument("job", nargs="?")
    p = cp.add_parser("reset")
    p.add_argument("job")
    p.add_argument("--stream")
    p.add_argument("--yes", action="store_true", help="confirm")
    dl = sub.add_parser("dead-letters", help="list, replay or purge dead letters").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    p = dl.add_parser("list")
    p.add_argument("--job")
    p.add_argument("--limit", type=_positive, default=50)
    p = dl.add_parser("replay", help="replay as a run of the job (waits while a run of the job is live)")
    p.add_argument("job")
    p.add_argument("--no-wait", action="store_true", help="exit 1 instead of waiting while the job runs")
    p = dl.add_parser("purge")
    p.add_argument("job")
    p.add_argument("--before", help="only dead letters created before this date (YYYY-MM-DD)")
    from batcher.handlercommands import add_handler_commands

    add_handler_commands(sub)  # the commands handlers contribute (batcher.extension.CliCommand)
    return parser


def _fail(message: str, code: int) -> int:
    print(f"batcher: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    from batcher.errors import BatcherError, ConfigError, PermanentError

    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc).removeprefix("batcher: ").removeprefix("batcher "), EXIT_USAGE)
    except ConfigError as exc:  # a handler plugin that does not load (its commands are parsed too)
        return _fail(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help / --version: argparse printed its text; return, don't exit
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if args.command is None:
        return _fail("missing command (see `batcher --help`)", EXIT_USAGE)
    from batcher.clicommands import COMMANDS

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
