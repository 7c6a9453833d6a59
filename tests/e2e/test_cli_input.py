"""Bad input at the command line (issue 15, CLI): every argument of every command, range checks at parse
time, arguments checked before connecting, misspelled job names, ``--next``'s cap, ``batcher types``,
the last-resort error line, and ISO 8601 timestamps.

Commands run in-process through ``batcher.cli.main`` against the session's database and Redis.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from batcher.cli import build_parser, main
from tests.inprocess import sync_config_file

pytestmark = pytest.mark.timeout(120)

URL_NAMES = ("BATCHER_DATABASE_URL", "DATABASE_URL", "BATCHER_REDIS_URL", "REDIS_URL")
DOWN_POSTGRES = "postgresql://postgres@127.0.0.1:1/x"
JOBS_TOML = """
[jobs.every-five]
type = "synthetic"
interval_minutes = 5
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, redis_url: str) -> Path:
    """The test services through BATCHER_* URLs, a one-job config and a private data dir (returned)."""
    for name in URL_NAMES:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "batcher.toml"
    config.write_text(JOBS_TOML)
    monkeypatch.setenv("BATCHER_CONFIG", str(config))
    monkeypatch.setenv("BATCHER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BATCHER_DATABASE_URL", database_url)
    monkeypatch.setenv("BATCHER_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCHER_API_PORT", "0")
    monkeypatch.setenv("BATCHER_LOG_FORMAT", "json")
    monkeypatch.delenv("BATCHER_DEBUG", raising=False)
    return tmp_path


# ------------------------------------------------------------------ every argument, the usual bad values

BAD_VALUES = {
    "huge": "99999999999999999999", "negative": "-1", "zero": "0", "non-numeric": "abc", "empty": "",
    "nul": "a\x00b", "control": "a\x1b[31mb", "newline": "a\nb", "long": "x" * 5000,
    "unknown-job": "nosuch", "bad-date": "2026-13-45",
}
#: Base values of required arguments (by dest): valid in shape, naming nothing that exists.
BASE = {"job": "nosuch", "run_id": "1", "date_from": "2026-01-01", "date_to": "2026-01-02",
        "date": "2026-01-01"}
#: Arguments for which some of the bad values are legitimately valid (a free-form merchant id that
#: aggregate-status just reports on): exit 0 is allowed there.
MAY_SUCCEED = {("aggregate-status", "--merchant")}


def _leaves() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every runnable command path of the parser and its (sub)parser, walked from build_parser()."""
    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> list[tuple[list[str], Any]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return [(prefix, parser)]
        return [leaf for name, sub in subs[0].choices.items() for leaf in walk(sub, [*prefix, name])]

    return walk(build_parser(), [])


def _value_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.nargs != 0 and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


def _argv(path: list[str], parser: argparse.ArgumentParser, tested: argparse.Action, bad: str) -> list[str]:
    """The command with ``bad`` as ``tested``'s value, required arguments at base values, every flag on."""
    positionals: list[str] = []
    options: list[str] = []
    actions = _value_actions(parser)
    tested_at = actions.index(tested)
    for i, action in enumerate(actions):
        value = bad if action is tested else (action.choices and next(iter(action.choices))) or BASE.get(action.dest)
        if not action.option_strings:
            if action is tested or action.nargs is None or (action.nargs == "?" and i < tested_at):
                positionals.append(str(value))
        elif action is tested or action.required:
            options += [action.option_strings[0], str(value)]
    flags = [a.option_strings[0] for a in parser._actions if a.nargs == 0 and a.option_strings
             and not isinstance(a, argparse._HelpAction)]
    return [*path, *positionals, *options, *flags]


CASES = [(path, action.dest) for path, parser in _leaves() for action in _value_actions(parser)]


@pytest.mark.parametrize(("path", "dest"), CASES, ids=[f"{' '.join(p)}:{d}" for p, d in CASES])
@pytest.mark.usefixtures("env")
def test_every_argument_rejects_bad_values_in_one_line(path: list[str], dest: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Each argument of each command (walked from the parser, so new ones are covered) given huge,
    negative, zero, non-numeric, empty, NUL/control-character, very long, unknown-name and bad-date
    values: exit 2 (usage) or 1 (not found), exactly one ``batcher: …`` line on stderr, no traceback."""
    sync_config_file()
    parser = dict((tuple(p), sub) for p, sub in _leaves())[tuple(path)]
    action = next(a for a in _value_actions(parser) if a.dest == dest)
    name = action.option_strings[0] if action.option_strings else dest
    for label, bad in BAD_VALUES.items():
        argv = _argv(path, parser, action, bad)
        code = main(argv)
        out, err = capsys.readouterr()
        shown = f"{label}: batcher {' '.join(argv)[:120]!r} → exit {code}, stderr {err[:300]!r}"
        assert "Traceback" not in out + err, shown
        if code == 0 and (path[0], name) in MAY_SUCCEED:
            continue
        assert code in (1, 2), shown
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("batcher: "), shown


def test_the_walk_covers_the_commands_of_the_issue() -> None:
    """The table above really reaches the arguments the issue named (and the new ones)."""
    covered = {(" ".join(p), d) for p, d in CASES}
    assert covered >= {("runs", "run_id"), ("cancel", "run_id"), ("runs", "limit"),
                       ("dead-letters list", "limit"), ("jobs", "next"), ("dead-letters purge", "before"),
                       ("run-job", "param"), ("backfill", "date_to"), ("aggregate-status", "merchant")}


@pytest.mark.parametrize("argv", [
    ["runs", "show", "99999999999999999999"], ["cancel", "99999999999999999999"],
    ["runs", "--limit", "99999999999999999999"], ["dead-letters", "list", "--limit", "99999999999999999999"],
    ["runs", "--limit", "501"], ["cancel", "9223372036854775808"],
])
@pytest.mark.usefixtures("env")
def test_out_of_range_numbers_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's examples (once asyncpg DataError tracebacks): exit 2 naming the range."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected an integer from 1 to" in err, err


# ------------------------------------------------------------------ checked before connecting

@pytest.mark.parametrize(("argv", "fragment"), [
    (["runs", "show"], "runs show needs a RUN_ID"),
    (["runs", "5"], "invalid choice"),
    (["jobs", "--next", "3"], "--next needs a JOB"),
    (["jobs", "sync", "--next", "3"], "jobs sync takes no --next"),
    (["checkpoints", "reset", "some-job"], "add --yes to confirm"),
    (["backfill", "j", "--from", "2026-02-01", "--to", "2026-01-01"], "is before --from"),
    (["backfill", "j", "--from", "2020-01-01", "--to", "2026-01-01"], "add --yes"),
    (["dead-letters", "purge", "j", "--before", "yesterday"], "--before: expected a date"),
    (["aggregate", "--date", "2026-01-01", "--from", "2026-01-01", "--to", "2026-01-02"], "cannot be combined"),
    (["aggregate-status", "2026-01-01", "--merchant", "a:b"], "is not a merchant id"),
    (["trigger", "j", "--param", "k=\x00"], "must not contain NUL"),
    (["run-job", "synthetic", "--param", "records=1e999"], "infinite number"),
])
def test_usage_errors_come_before_connecting(argv: list[str], fragment: str, env: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With an unreachable database, a usage error is still exit 2 with the usage message (not a
    connection error): every argument is checked before a command connects anywhere."""
    monkeypatch.setenv("BATCHER_DATABASE_URL", DOWN_POSTGRES)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


# ------------------------------------------------------------------ misspelled job names

@pytest.mark.parametrize("argv", [
    ["runs", "--job", "nosuch"], ["dead-letters", "list", "--job", "nosuch"], ["checkpoints", "show", "nosuch"],
    ["checkpoints", "reset", "nosuch", "--yes"], ["pause", "nosuch"], ["resume", "nosuch"],
    ["trigger", "nosuch"], ["backfill", "nosuch", "--from", "2026-01-01", "--to", "2026-01-02"],
    ["dead-letters", "replay", "nosuch"], ["dead-letters", "purge", "nosuch"], ["jobs", "nosuch"],
    ["jobs", "nosuch", "--next", "3"],
])
@pytest.mark.usefixtures("env")
def test_a_misspelled_job_name_says_so(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every command that takes a job name answers an unknown one with ``no job named 'nosuch'`` (exit 1),
    instead of printing nothing as if the job had no data."""
    sync_config_file()
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert err == "batcher: no job named 'nosuch'\n" and out == "", (out, err)


# ------------------------------------------------------------------ --next, timestamps, types

@pytest.mark.usefixtures("env")
def test_next_is_capped_at_100_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    """`jobs NAME --next 100000` prints 100 fire times (the API's cap) and says so on stderr."""
    sync_config_file()
    assert main(["jobs", "every-five", "--next", "100000"]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 100, len(out.split())
    assert "more than 100" in err and err.count("\n") == 1, err


@pytest.mark.usefixtures("env")
def test_cli_timestamps_are_iso_8601_with_T(capsys: pytest.CaptureFixture[str]) -> None:
    """`jobs` prints its timestamps as `runs` does: ISO 8601 with a ``T`` (no ``2026-12-04 01:20:35``)."""
    sync_config_file()
    assert main(["jobs"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert "T" in row["next_run_at"] and " " not in row["next_run_at"], row


def test_types_lists_every_job_type_and_its_params(capsys: pytest.CaptureFixture[str]) -> None:
    """`batcher types` (no database needed) shows each job type's params with type, default, bounds and
    description as a table; `--json` gives the same as one JSON line per type, secrets marked."""
    assert main(["types"]) == 0
    table = capsys.readouterr().out
    assert "synthetic (Synthetic records" in table and "delay_ms" in table and "PARAM" in table
    assert main(["types", "--json"]) == 0
    types = {t["type"]: t for t in map(json.loads, capsys.readouterr().out.splitlines())}
    assert {"synthetic", "datasync", "usage_aggregation"} <= set(types)
    params = {p["name"]: p for p in types["synthetic"]["params"]}
    assert params["records"] == {"name": "records", "type": "int", "required": False, "default": 1000,
                                 "secret": False, "bounds": ">= 0", "description": params["records"]["description"]}
    assert params["records"]["description"]
    api_key = {p["name"]: p for p in types["datasync"]["params"]}["api_key"]
    assert api_key["secret"] is True and api_key["required"] is True and "api_key_env" in api_key["description"]


@pytest.mark.usefixtures("env")
def test_an_unknown_param_key_lists_the_valid_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """`--param nosuch=1` names the valid keys (secrets as their ``_env`` reference), exit 2."""
    sync_config_file()
    assert main(["trigger", "every-five", "--param", "nosuch=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key (valid keys: records, batch_size, delay_ms" in err and "token_env" in err, err


# ------------------------------------------------------------------ the last resort

@pytest.mark.usefixtures("env")
def test_an_unexpected_error_is_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A bug in a command prints one ``batcher: unexpected error`` line (exit 1), not a traceback;
    with BATCHER_DEBUG=1 the exception propagates so the traceback shows."""
    from batcher import clicommands

    async def broken(_args: argparse.Namespace) -> int:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(clicommands.COMMANDS, "health", broken)
    assert main(["health"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("batcher: unexpected error: RuntimeError: boom second line") and err.count("\n") == 1
    monkeypatch.setenv("BATCHER_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["health"])


def test_embedded_reuse_is_logged_at_debug(tmp_path: Path) -> None:
    """Reusing a running embedded server (what every command does under `make run`) is logged at debug,
    not info, so commands do not open with ``embedded_postgres_reused`` / ``embedded_redis_reused``."""
    import os
    import signal

    from structlog.testing import capture_logs

    from batcher import embedded
    from batcher.logs import configure_logging

    kinds = [embedded._Kind(name, name, "X", lambda _d: os.getpid(), lambda _d: os.getpid(),
                            lambda _d, n=name: f"{n}://here", lambda d: d, signal.SIGTERM, "python")
             for name in ("postgres", "redis")]
    configure_logging("console", "debug")  # so a debug entry is seen at all
    try:
        with capture_logs() as logs:
            for kind in kinds:
                _, entry = embedded._acquire(tmp_path, kind, start=False)
                entry.unlink()
    finally:
        configure_logging("console", "info")  # as tests/conftest.py set it for the session
    reused = {e["event"]: e["log_level"] for e in logs if e["event"].endswith("_reused")}
    assert reused == {"embedded_postgres_reused": "debug", "embedded_redis_reused": "debug"}, logs


def test_the_readme_cli_reference_lists_every_command() -> None:
    """README's CLI reference names every command the parser has (``batcher types`` included), and the
    argument limits this module enforces."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## CLI reference"):readme.index("## Scheduling semantics")]
    missing = sorted({p[0] for p, _ in _leaves() if f"`batcher {p[0]}" not in section})
    assert not missing, missing
    assert "`--limit` 1..500" in section and "BATCHER_DEBUG=1" in section and ".venv/bin/batcher" in section
