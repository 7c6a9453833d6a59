"""`batcher trigger --wait` follows a manual run (and its retries) run by a daemon, with run-job's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.procs import REPO, Proc, batcher_env, write_config


def _trigger_wait(env: dict[str, str], job: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "batcher", "trigger", job, "--wait"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_trigger_wait_exits_by_the_final_status_of_the_chain(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """With a daemon running: `trigger ok --wait` prints the succeeded summary and exits 0; `trigger flaky
    --wait` follows the run through its retry (transient failure on attempt 1) to success, exit 0;
    `trigger broken --wait` exits 1 with the failed summary."""
    jobs = {
        "ok": {"type": "synthetic", "enabled": False, "params": {"records": 30, "batch_size": 10}},
        "flaky": {"type": "synthetic", "enabled": False, "retry_base_seconds": 0.1,
                  "params": {"records": 30, "batch_size": 10, "fail_at_batch": 2}},
        "broken": {"type": "synthetic", "enabled": False,
                   "params": {"records": 30, "batch_size": 10, "fail_at_batch": 1, "fail_mode": "permanent"}},
    }
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", jobs), tmp_path)
    daemon = Proc(["run"], env, tmp_path / "d.log")
    procs.append(daemon)
    daemon.wait_event("daemon_ready")
    code, summary = _trigger_wait(env, "ok")
    assert (code, summary["status"], summary["records"]) == (0, "succeeded", 30)
    code, summary = _trigger_wait(env, "flaky")
    assert (code, summary["status"]) == (0, "succeeded"), summary
    code, summary = _trigger_wait(env, "broken")
    assert (code, summary["status"], summary["reason"]) == (1, "failed", "permanent_error")
