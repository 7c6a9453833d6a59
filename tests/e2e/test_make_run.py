"""`make run` and SIGTERM (issue 15): what the Makefile's header comment and the README say is true."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from batcher.procutil import alive
from tests.e2e.procs import REPO, batcher_env, write_config
from tests.polling import wait_for_sync

pytestmark = pytest.mark.timeout(90)


def _events(path: Path) -> list[str]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line).get("event"))
        except ValueError:
            continue
    return out


def _wait(what: str, check: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    wait_for_sync(check, timeout, 0.05, what=what, details=lambda: log.read_text()[-3000:])


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_sigterm_to_make_run_stops_the_daemon_gracefully_and_make_dies_of_it(
        db: Any, database_url: str, redis_url: str, tmp_path: Path) -> None:
    """A SIGTERM to `make run` is forwarded to the daemon, which stops gracefully (daemon_stopping,
    daemon_stopped), while make itself dies of the signal — status 143 in a shell, -15 here — not 0."""
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "batcher.toml", {}), tmp_path / "data")
    log = tmp_path / "make.log"
    with log.open("wb") as out:
        make = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=REPO, env=env, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        _wait("daemon_ready", lambda: "daemon_ready" in _events(log), make, log)
        daemons = _children(make.pid)
        assert len(daemons) == 1, daemons
        make.send_signal(signal.SIGTERM)
        assert make.wait(30) == -signal.SIGTERM
        _wait("the daemon's exit", lambda: not alive(daemons[0]), make, log, timeout=30)
        events = _events(log)
        assert "daemon_stopping" in events and events[-1] == "daemon_stopped", events[-5:]
    finally:
        if make.poll() is None:
            make.kill()
            make.wait(10)
