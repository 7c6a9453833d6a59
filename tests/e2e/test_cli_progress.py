"""Foreground runs at the command line (issue 15): live progress on a terminal, ``run_progress`` events in
JSON-log mode, and the reason a run-job's only failed attempt ends with.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batcher import progress
from batcher.cli import main
from tests.e2e.procs import REPO, Proc, batcher_env, write_config

pytestmark = pytest.mark.timeout(90)
SLOW = ["--param", "records=40", "--param", "batch_size=10", "--param", "delay_ms=300"]


@pytest.fixture
def config(db: Any, tmp_path: Path) -> Path:
    return write_config(tmp_path / "batcher.toml", {})


@pytest.fixture
def env(config: Path, database_url: str, redis_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in batcher_env(database_url, redis_url, config, tmp_path / "data").items():
        if key.startswith("BATCHER_"):
            monkeypatch.setenv(key, value)
    for key in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def _read_all(fd: int, proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed its side
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_run_job_on_a_terminal_shows_a_live_progress_line(config: Path, database_url: str, redis_url: str,
                                                          tmp_path: Path) -> None:
    """`run-job` with stderr on a terminal (a pty) redraws one progress line in place — records of the
    handler's total, rate, elapsed — and clears it at the end and before each log line (no log entry is
    glued to it); stdout still ends with the summary."""
    master, slave = pty.openpty()
    env = batcher_env(database_url, redis_url, config, tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "run-job", "synthetic", *SLOW], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    try:
        err = _read_all(master, proc, time.monotonic() + 60).decode(errors="replace")
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out.decode().splitlines()[-1])["records"] == 40
    draws = [part for part in err.split("\r\x1b[K") if part.startswith("run ")]
    assert draws, err
    assert any(" of 40 records · " in d and "/s · " in d for d in draws), draws
    segments = err.split("\r\x1b[K")
    assert not segments[-1].startswith("run "), "the line is cleared at the end"
    assert all("{" not in d for d in draws), "a log line clears the progress line before it is written"


@pytest.mark.usefixtures("env")
def test_run_job_in_json_log_mode_logs_run_progress(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Not on a terminal, a long `run-job` logs ``run_progress`` events (run, records, total, rate,
    elapsed) every LOG_EVERY seconds (5 s; shortened here) between run_started and run_finished."""
    monkeypatch.setattr(progress, "LOG_EVERY", 0.2)
    assert main(["run-job", "synthetic", *SLOW]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    ticks = [e for e in events if e.get("event") == "run_progress"]
    assert len(ticks) >= 2, names
    assert names.index("run_started") < names.index("run_progress") < names.index("run_finished"), names
    assert ticks[-1]["total"] == 40 and 0 <= ticks[-1]["records"] <= 40 and "rate" in ticks[-1], ticks[-1]
    assert ticks[-1]["elapsed_s"] > ticks[0]["elapsed_s"]


def test_the_progress_line_reads_well() -> None:
    """records of total, rate per second, elapsed: ``run 7 (nightly): 1,200 of 10,000 records · 40/s · 30s``."""
    assert progress.progress_line(7, "nightly", {"records": 1200, "total": 10_000}, 30.0) == \
        "run 7 (nightly): 1,200 of 10,000 records · 40/s · 30s"
    assert progress.progress_line(7, "n", {"records": 5}, 65.0) == "run 7 (n): 5 records · 0/s · 1m05s"


@pytest.mark.usefixtures("env")
def test_a_run_jobs_only_failed_attempt_is_a_transient_error_not_retries_exhausted(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A `run-job` never retries: its only attempt failing with a transient error ends failed with reason
    ``transient_error`` (what happened), not ``retries_exhausted`` (no retry was tried), none queued."""
    code = main(["run-job", "synthetic", "--param", "records=20", "--param", "batch_size=10",
                 "--param", "fail_at_batch=1"])
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 1
    assert (summary["status"], summary["reason"], summary["attempt"], summary["retry_queued"]) == \
        ("failed", "transient_error", 1, False), summary


@pytest.mark.usefixtures("env")
def test_dead_letter_reasons_of_a_succeeded_run_are_not_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """A run that succeeded with dead letters keeps ``errors`` empty and shows their count and reasons
    under their own key, ``dead_letter_reasons`` (in the summary and in the run's stored progress)."""
    code = main(["run-job", "synthetic", "--param", "records=20", "--param", "batch_size=10",
                 "--param", "reject_every=5", "--param", "poison_every=7"])
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 0 and summary["status"] == "succeeded", summary
    assert summary["errors"] == [] and summary["dead_letters"] > 0, summary
    assert summary["dead_letter_reasons"] and len(summary["dead_letter_reasons"]) <= 20, summary
    assert main(["runs", "show", str(summary["run_id"])]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["errors"] == [] and run["progress"]["dead_letter_reasons"] == summary["dead_letter_reasons"]


def test_trigger_wait_logs_run_progress_while_a_daemon_runs_it(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], procs: list[Proc]) -> None:
    """`trigger --wait` follows a run a daemon executes and, not on a terminal, logs ``run_progress``
    events for it (run id, job, records, the handler's total) until the final summary."""
    config = write_config(tmp_path / "batcher.toml", {"slow": {
        "type": "synthetic", "interval_minutes": 1440,
        "params": {"records": 40, "batch_size": 10, "delay_ms": 300}}})
    env = batcher_env(database_url, redis_url, config, tmp_path / "data")
    daemon = Proc(["run"], env, tmp_path / "daemon.log")
    procs.append(daemon)
    daemon.wait_event("daemon_ready")
    for key, value in env.items():
        if key.startswith("BATCHER_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(progress, "LOG_EVERY", 0.2)
    assert main(["trigger", "slow", "--wait"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.splitlines()[-1])
    ticks = [e for e in map(json.loads, filter(lambda x: x.startswith("{"), err.splitlines()))
             if e.get("event") == "run_progress"]
    assert summary["status"] == "succeeded" and summary["records"] == 40, summary
    assert ticks and {t["run_id"] for t in ticks} == {summary["run_id"]} and ticks[-1]["job"] == "slow", ticks
    assert any(t["total"] == 40 for t in ticks), ticks
