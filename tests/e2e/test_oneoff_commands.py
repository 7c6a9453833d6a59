"""Issue 14 defect 16: one-off commands read the daemon's jobs from batch_config, never rewrite them.

Only the daemon (`batcher run`) and `batcher jobs sync` write the file's jobs into batch_config;
`run-job`, `trigger`, `backfill` and `aggregate` with a different file, or none, leave every row as it
was. Commands run in-process through ``batcher.cli.main`` except the daemon-level test, which runs a
daemon and a `run-job` as real processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from batcher.cli import main
from tests.e2e.procs import Proc, batcher_env, poll, write_config

pytestmark = pytest.mark.timeout(90)

FILE_A = {
    "nightly": {"type": "synthetic", "interval_minutes": 1440, "params": {"records": 20, "batch_size": 10}},
    "windowed": {"type": "synthetic", "interval_minutes": 1440, "params": {"records": 5}},
    "off": {"type": "synthetic", "enabled": False, "interval_minutes": 1440, "params": {"records": 5}},
}
FILE_B = {  # another user's file: "off" switched on, "nightly" changed, "windowed" gone, "fresh" new
    "nightly": {"type": "synthetic", "interval_minutes": 60, "params": {"records": 99}},
    "off": {"type": "synthetic", "interval_minutes": 1, "params": {"records": 7}},
    "fresh": {"type": "synthetic", "interval_minutes": 5, "params": {"records": 3}},
}


def _sql(database_url: str, sql: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(database_url)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


def _table(database_url: str) -> list[dict[str, Any]]:
    return _sql(database_url, "SELECT * FROM batch_config ORDER BY job_name")  # type: ignore[no-any-return]


@pytest.fixture
def cli(db: Any, database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, list[Any], str]]:
    """``batcher ARGS`` in-process on the test services with file A; returns (code, JSON lines, stderr)."""
    for key in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BATCHER_DATABASE_URL", database_url)
    monkeypatch.setenv("BATCHER_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCHER_CONFIG", str(write_config(tmp_path / "a.toml", FILE_A)))
    monkeypatch.setenv("BATCHER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BATCHER_LOG_FORMAT", "json")
    monkeypatch.setenv("BATCHER_API_PORT", "0")

    def run(*args: str) -> tuple[int, list[Any], str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        lines = [json.loads(line) for line in out.splitlines() if line.strip().startswith(("{", "["))]
        return code, lines, err

    return run


def _use_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, which: str) -> None:
    """Point the caller at file B, or at no file at all (a directory without batcher.toml)."""
    if which == "B":
        monkeypatch.setenv("BATCHER_CONFIG", str(write_config(tmp_path / "b.toml", FILE_B)))
    else:
        empty = tmp_path / "elsewhere"
        empty.mkdir()
        monkeypatch.chdir(empty)
        monkeypatch.delenv("BATCHER_CONFIG")


def _strip_run_state(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without the columns a run itself updates (its last success), which are not config."""
    return [{k: v for k, v in r.items() if k not in ("last_success_at",)} for r in rows]


@pytest.mark.parametrize("caller_file", ["B", "none"])
def test_one_off_commands_leave_batch_config_unchanged(
        caller_file: str, cli: Callable[..., Any], database_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With batch_config synced from file A (`jobs sync`), `run-job`, `trigger` and `backfill` run from a
    caller with a different file, or none, succeed on the table's jobs and leave every batch_config row
    exactly as it was (every column, except a run's own last_success_at)."""
    code, _, err = cli("jobs", "sync")
    assert code == 0, err
    before = _table(database_url)
    assert {r["job_name"]: (r["enabled"], r["orphaned"]) for r in before} == {
        "nightly": (True, False), "windowed": (True, False), "off": (False, False)}
    _use_file(monkeypatch, tmp_path, caller_file)
    code, lines, err = cli("run-job", "nightly")
    assert (code, lines[-1]["records"]) == (0, 20), err
    code, _, err = cli("run-job", "synthetic", "--param", "records=5")
    assert code == 0, err
    assert cli("trigger", "nightly")[0] == 0
    assert cli("backfill", "nightly", "--from", "2026-01-01", "--to", "2026-01-02")[0] == 0
    after = [r for r in _table(database_url) if r["job_name"] != "synthetic"]  # the ad-hoc job run-job made
    assert _strip_run_state(after) == _strip_run_state(before)


def test_run_job_of_a_job_only_in_the_file_is_refused(cli: Callable[..., Any], database_url: str,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run-job`/`trigger`/`backfill` of a job that is in the caller's batcher.toml but not in the database
    exit 2 saying to start the daemon or run `batcher jobs sync`, and write nothing to batch_config."""
    cli("jobs", "sync")
    before = _table(database_url)
    _use_file(monkeypatch, tmp_path, "B")
    for argv in (["run-job", "fresh"], ["trigger", "fresh"],
                 ["backfill", "fresh", "--from", "2026-01-01", "--to", "2026-01-01"]):
        code, _, err = cli(*argv)
        assert code == 2, (argv, err)
        assert ("job 'fresh' is in batcher.toml but not in the database: start the daemon or run "
                "`batcher jobs sync`") in err, err
    assert _table(database_url) == before


def test_jobs_sync_applies_the_file_and_reports(cli: Callable[..., Any], database_url: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`batcher jobs sync` writes the file's jobs into batch_config and prints what changed as JSON
    (added, updated, orphaned, unchanged), exit 0; run again it changes nothing; with another file it
    updates, adds and orphans; a bad file exits 2 and writes nothing."""
    code, lines, _ = cli("jobs", "sync")
    assert code == 0
    assert lines[-1] == {"added": ["nightly", "off", "windowed"], "updated": [], "orphaned": [],
                         "unchanged": []}
    code, lines, _ = cli("jobs", "sync")
    assert (code, lines[-1]["added"], lines[-1]["updated"], lines[-1]["unchanged"]) == \
        (0, [], [], ["nightly", "off", "windowed"])
    _use_file(monkeypatch, tmp_path, "B")
    code, lines, _ = cli("jobs", "sync")
    assert code == 0
    assert lines[-1] == {"added": ["fresh"], "updated": ["nightly", "off"], "orphaned": ["windowed"],
                         "unchanged": []}
    rows = {r["job_name"]: r for r in _table(database_url)}
    assert (rows["off"]["enabled"], rows["windowed"]["enabled"], rows["windowed"]["orphaned"]) == \
        (True, False, True)
    before = _table(database_url)
    (tmp_path / "bad.toml").write_text('[jobs.x]\ntype = "synthetic"\ncron = "not a cron"\n')
    monkeypatch.setenv("BATCHER_CONFIG", str(tmp_path / "bad.toml"))
    code, _, err = cli("jobs", "sync")
    assert code == 2 and "x" in err and "cron" in err, err
    assert _table(database_url) == before


def test_a_run_job_without_a_file_leaves_a_running_daemon_scheduling(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """A daemon runs with file A; `batcher run-job synthetic --param records=5` run as a process from a
    directory without batcher.toml succeeds, and the daemon's jobs stay enabled and not orphaned, and
    the daemon goes on scheduling them: when the job's next run is due (set due in the table rather than
    waiting its interval out) it queues and runs a scheduled run."""
    jobs = {"tick": {"type": "synthetic", "interval_minutes": 60, "params": {"records": 3}}}
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "a.toml", jobs), tmp_path / "d")
    daemon = Proc(["run"], env, tmp_path / "d.log")
    procs.append(daemon)
    daemon.wait_event("daemon_ready")
    done_sql = "SELECT count(*) FROM batch_runs WHERE job_name = 'tick' AND trigger = 'schedule' " \
               "AND status = 'succeeded'"
    asyncio.run(_poll(database_url, done_sql, 1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    oneoff_env = {k: v for k, v in env.items() if k != "BATCHER_CONFIG"}
    done = subprocess.run([sys.executable, "-m", "batcher", "run-job", "synthetic", "--param", "records=5"],
                          env=oneoff_env, cwd=elsewhere, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    row = _sql(database_url, "SELECT enabled, orphaned, next_run_at FROM batch_config WHERE job_name = 'tick'")[0]
    assert (row["enabled"], row["orphaned"], row["next_run_at"] is not None) == (True, False, True)
    _sql(database_url, "UPDATE batch_config SET next_run_at = now() WHERE job_name = 'tick'")
    asyncio.run(_poll(database_url, done_sql, 2))


async def _poll(database_url: str, sql: str, at_least: int) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await poll(pool, f"SELECT ({sql}) >= $1", at_least, timeout=30)
    finally:
        await pool.close()
