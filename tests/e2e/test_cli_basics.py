"""The ``batcher`` command line basics (DESIGN §9, issue 3): version, help, usage errors, health, jobs,
and the rule that configured database/Redis URLs mean no embedded server starts.

Commands run in-process through ``batcher.cli.main`` (stdout/stderr captured), except ``--version``,
which is also checked as a real ``python -m batcher`` process for its exit status.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batcher import __version__
from batcher.cli import build_parser, main
from tests.inprocess import sync_config_file

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
URL_NAMES = ("BATCHER_DATABASE_URL", "DATABASE_URL", "BATCHER_REDIS_URL", "REDIS_URL")
DOWN_POSTGRES = "postgresql://postgres@127.0.0.1:1/x"
DOWN_REDIS = "redis://127.0.0.1:1/0"
EMBEDDED_TRACES = ("postgres", "redis", "postgres.lock", "redis.lock", "postgres.users", "redis.users")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, redis_url: str) -> Path:
    """The test services through BATCHER_* URLs, an empty config and a private data dir (returned)."""
    for name in URL_NAMES:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "batcher.toml"
    config.write_text("")
    data_dir = tmp_path / "data"
    monkeypatch.setenv("BATCHER_CONFIG", str(config))
    monkeypatch.setenv("BATCHER_DATA_DIR", str(data_dir))
    monkeypatch.setenv("BATCHER_DATABASE_URL", database_url)
    monkeypatch.setenv("BATCHER_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCHER_API_PORT", "0")
    monkeypatch.setenv("BATCHER_LOG_FORMAT", "json")
    return data_dir


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_no_embedded_server(data_dir: Path) -> None:
    leftovers = [name for name in EMBEDDED_TRACES if (data_dir / name).exists()]
    assert not leftovers, f"an embedded server was set up in {data_dir}: {leftovers}"


# --------------------------------------------------------------------------- version and help

def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """`batcher --version` prints ``batcher <version>`` on stdout and returns 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"batcher {__version__}"


def test_version_as_a_process() -> None:
    """`python -m batcher --version` exits 0 with the version on stdout and nothing on stderr."""
    done = subprocess.run([sys.executable, "-m", "batcher", "--version"], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, f"batcher {__version__}", "")


def _commands() -> list[list[str]]:
    """Every subcommand path of the parser (nested ones such as `checkpoints reset` included)."""
    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
        out = [prefix]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out += walk(sub, [*prefix, name])
        return out

    return walk(build_parser(), [])


COMMANDS = _commands()


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "batcher" for c in COMMANDS])
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` works for the program and every subcommand: exit 0, usage on stdout, nothing on stderr."""
    assert main([*command, "--help"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: batcher"), captured.out[:200]
    assert captured.err == ""


def test_the_documented_commands_exist() -> None:
    """DESIGN §9's command list is there (``backfill`` arrives with its own issue)."""
    top = {c[0] for c in COMMANDS if len(c) == 1}
    assert top >= {"run", "run-job", "trigger", "jobs", "runs", "pause", "resume", "cancel", "dead-letters",
                   "checkpoints", "aggregate", "aggregate-status", "migrate", "health"}
    assert {tuple(c) for c in COMMANDS} >= {("dead-letters", "list"), ("dead-letters", "replay"),
                                            ("dead-letters", "purge"), ("checkpoints", "show"),
                                            ("checkpoints", "reset")}


# --------------------------------------------------------------------------- usage errors

@pytest.mark.parametrize(("argv", "fragment"), [
    ([], "missing command"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["runs", "--limit", "x"], "--limit: expected an integer from 1 to 500, got 'x'"),
    (["runs", "--limit", "0"], "expected an integer from 1 to 500, got '0'"),
    (["runs", "--status", "sleeping"], "invalid choice: 'sleeping'"),
    (["cancel", "abc"], "run_id: expected an integer from 1 to 9,223,372,036,854,775,807, got 'abc'"),
    (["cancel"], "the following arguments are required: run_id"),
    (["run-job"], "the following arguments are required: job"),
    (["run-job", "synthetic", "--param", "novalue"], "--param: expected KEY=VALUE, got 'novalue'"),
    (["run-job", "synthetic", "--param", "=1"], "--param: expected KEY=VALUE"),
    (["trigger", "x", "--param", "novalue"], "--param: expected KEY=VALUE, got 'novalue'"),
    (["pause"], "the following arguments are required: job"),
    (["jobs", "--next", "x"], "--next: expected an integer from 1 to"),
    (["checkpoints"], "the following arguments are required: action"),
    (["checkpoints", "erase"], "invalid choice: 'erase'"),
    (["dead-letters", "list", "--limit", "-1"], "expected an integer from 1 to 500"),
    (["run", "extra"], "unrecognized arguments: extra"),
    (["runs", "show"], "runs show needs a RUN_ID"),
    (["jobs", "--next", "3"], "--next needs a JOB"),
    (["checkpoints", "reset", "some-job"], "add --yes to confirm"),
])
@pytest.mark.usefixtures("env")
def test_usage_errors_exit_2_with_one_line(argv: list[str], fragment: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown commands and bad arguments exit 2 with exactly one ``batcher: …`` line on stderr naming
    the problem, and nothing on stdout."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, f"exit {code}: {captured}"
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("batcher: ") and fragment in lines[0], lines[0]
    assert not lines[0].startswith("batcher: batcher"), lines[0]
    assert captured.out == ""


# --------------------------------------------------------------------------- health

def test_health_ok(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`batcher health` against the test services: both ok (with the server's description), exit 0,
    and no embedded server is set up."""
    assert main(["health"]) == 0
    report = json_lines(capsys.readouterr().out)[-1]
    assert report["postgres"]["ok"] is True and "PostgreSQL" in report["postgres"]["reason"], report
    assert report["redis"]["ok"] is True, report
    assert "mongodb" not in report
    assert_no_embedded_server(env)


@pytest.mark.parametrize(("name", "url", "down"), [
    ("BATCHER_DATABASE_URL", DOWN_POSTGRES, "postgres"),
    ("BATCHER_DATABASE_URL", "postgresql://postgres@192.0.2.1:5432/x", "postgres"),  # TEST-NET: no answer
    ("BATCHER_REDIS_URL", DOWN_REDIS, "redis"),
])
@pytest.mark.usefixtures("env")
def test_health_reports_a_service_down(name: str, url: str, down: str, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable service is reported down with a reason, the other one still ok, exit 1, within a
    few seconds (each check has a short timeout)."""
    monkeypatch.setenv(name, url)
    started = time.monotonic()
    code = main(["health"])
    elapsed = time.monotonic() - started
    report = json_lines(capsys.readouterr().out)[-1]
    assert code == 1, report
    assert report[down]["ok"] is False and report[down]["reason"], report
    other = "redis" if down == "postgres" else "postgres"
    assert report[other]["ok"] is True, report
    assert elapsed < 8, f"health took {elapsed:.1f} s"


@pytest.mark.usefixtures("env")
def test_health_checks_mongodb_when_configured(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """With a MongoDB URI configured (here an unreachable one), health reports ``mongodb`` down with a
    reason next to the ok PostgreSQL and Redis, and exits 1 within a few seconds."""
    monkeypatch.setenv("BATCHER_MONGODB_URI", "mongodb://127.0.0.1:1/batcher")
    started = time.monotonic()
    try:
        code = main(["health"])
    except ImportError as exc:
        raise AssertionError(
            "BUG batcher/health.py _mongo: imports `mongo_health` from batcher.sinks, which does not define "
            f"it, so `batcher health` with MongoDB configured crashes with a traceback: {exc}") from None
    report = json_lines(capsys.readouterr().out)[-1]
    assert code == 1, report
    assert report["mongodb"]["ok"] is False and report["mongodb"]["reason"], report
    assert report["postgres"]["ok"] and report["redis"]["ok"], report
    assert time.monotonic() - started < 10


def test_health_does_not_start_embedded_servers(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """With no URLs and no embedded server running, health reports both down (exit 1) and starts none."""
    for name in URL_NAMES:
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    assert main(["health"]) == 1
    report = json_lines(capsys.readouterr().out)[-1]
    assert report["postgres"]["ok"] is False and report["redis"]["ok"] is False, report
    assert time.monotonic() - started < 8
    assert not (env / "postgres").exists() and not (env / "redis").exists()


# --------------------------------------------------------------------------- jobs

JOBS_TOML = """
[jobs.every-five]
type = "synthetic"
interval_minutes = 5

[jobs.nightly]
type = "synthetic"
cron = "30 2 * * *"
timezone = "Europe/Berlin"
enabled = false

[jobs.follower]
type = "synthetic"
depends_on = ["every-five", "nightly"]

[jobs.defaulted]
type = "synthetic"
"""


def test_jobs_lists_the_synced_file(env: Path, tmp_path: Path, database_url: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`batcher jobs` prints one JSON line per synced job with its type, enabled flag, schedule, next
    run and last success; a job without a schedule gets its handler's default (synthetic: 5 min)."""
    (tmp_path / "batcher.toml").write_text(JOBS_TOML)
    sync_config_file(database_url)
    assert main(["jobs"]) == 0
    rows = {r["job"]: r for r in json_lines(capsys.readouterr().out)}
    assert set(rows) == {"every-five", "nightly", "follower", "defaulted"}
    assert rows["every-five"]["schedule"] == "every 5 min" and rows["every-five"]["enabled"] is True
    assert rows["every-five"]["next_run_at"] is not None
    assert rows["nightly"]["schedule"] == "cron 30 2 * * * Europe/Berlin"
    assert rows["nightly"]["enabled"] is False
    assert rows["follower"]["schedule"] == "after every-five,nightly"
    assert rows["follower"]["next_run_at"] is None
    assert rows["defaulted"]["schedule"] == "every 5 min"
    assert all(r["type"] == "synthetic" and r["last_success_at"] is None for r in rows.values())
    assert_no_embedded_server(env)


def test_jobs_one_job_and_next_fire_times(env: Path, tmp_path: Path, database_url: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`batcher jobs NAME` shows that job; `--next 3` prints three increasing fire times; an unknown
    job exits 1 with a one-line reason."""
    (tmp_path / "batcher.toml").write_text(JOBS_TOML)
    sync_config_file(database_url)
    assert main(["jobs", "nightly"]) == 0
    assert [r["job"] for r in json_lines(capsys.readouterr().out)] == ["nightly"]
    assert main(["jobs", "nightly", "--next", "3"]) == 0
    times = capsys.readouterr().out.split()
    assert len(times) == 3 and times == sorted(times) and len(set(times)) == 3, times
    assert main(["jobs", "no-such-job"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-job" in err[0], err


# --------------------------------------------------------------------------- external URLs win

@pytest.mark.parametrize("source", ["BATCHER_names", "plain_names", "toml"])
def test_configured_urls_mean_no_embedded_server(source: str, env: Path, tmp_path: Path, database_url: str,
                                                 redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """With the database and Redis URLs given (BATCHER_DATABASE_URL/BATCHER_REDIS_URL, or
    DATABASE_URL/REDIS_URL, or the TOML file), `batcher migrate` and `batcher health` (the first would
    start absent embedded servers) use them: nothing is created under the data dir."""
    for name in URL_NAMES:
        monkeypatch.delenv(name, raising=False)
    if source == "BATCHER_names":
        monkeypatch.setenv("BATCHER_DATABASE_URL", database_url)
        monkeypatch.setenv("BATCHER_REDIS_URL", redis_url)
    elif source == "plain_names":
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("REDIS_URL", redis_url)
    else:
        (tmp_path / "batcher.toml").write_text(f'[database]\nurl = "{database_url}"\n'
                                               f'[redis]\nurl = "{redis_url}"\n')
    assert main(["migrate"]) == 0, capsys.readouterr().err
    assert json_lines(capsys.readouterr().out)[-1]["applied"] == []
    assert main(["health"]) == 0
    capsys.readouterr()
    assert_no_embedded_server(env)


@pytest.mark.usefixtures("env")
def test_batcher_names_win_over_plain_names_and_the_file(tmp_path: Path, database_url: str, redis_url: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Precedence at the command line: BATCHER_DATABASE_URL over DATABASE_URL over the TOML file (the
    losers point at dead ports, so health would fail if they were used)."""
    (tmp_path / "batcher.toml").write_text(f'[database]\nurl = "{DOWN_POSTGRES}"\n'
                                           f'[redis]\nurl = "{DOWN_REDIS}"\n')
    monkeypatch.setenv("DATABASE_URL", DOWN_POSTGRES)
    monkeypatch.setenv("REDIS_URL", DOWN_REDIS)
    assert main(["health"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    monkeypatch.delenv("BATCHER_DATABASE_URL")
    monkeypatch.delenv("BATCHER_REDIS_URL")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["health"]) == 0, capsys.readouterr().out
