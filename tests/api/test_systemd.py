"""systemd integration: the daemon's sd_notify messages on a real NOTIFY_SOCKET (a path and an abstract
name), and ``systemd-analyze verify`` on deploy/batcher.service."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.procs import REPO, Proc, batcher_env, write_config

UNIT = REPO / "deploy" / "batcher.service"


def _receive_until(sock: socket.socket, wanted: str, got: list[str], proc: Proc, timeout: float = 30.0) -> None:
    """Collect datagrams (one state per line) into ``got`` until ``wanted`` arrives (anew)."""
    deadline, start = time.monotonic() + timeout, len(got)
    while wanted not in got[start:]:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {wanted} within {timeout} s; got {got}\n" + proc.log_path.read_text()[-3000:])
        if proc.popen.poll() is not None and wanted != "STOPPING=1":
            raise AssertionError(f"daemon exited ({proc.popen.returncode}) before {wanted}; got {got}")
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        got.extend(line for line in data.decode().splitlines() if line)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_socket_gets_ready_watchdog_and_stopping_in_order(database_url: str, redis_url: str,
                                                                 tmp_path: Path, abstract: bool) -> None:
    """With NOTIFY_SOCKET (a filesystem path, or an abstract ``@name``) and WATCHDOG_USEC set, a real
    daemon sends READY=1 once ready, WATCHDOG=1 while its loop ticks, and STOPPING=1 at SIGTERM, in
    that order, then exits 0."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"batcher-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        notify = "@" + name
    else:
        notify = str(tmp_path / "notify.sock")
        sock.bind(notify)
    sock.settimeout(0.2)
    config = write_config(tmp_path / "batcher.toml", {"synth": {"type": "synthetic", "interval_minutes": 1440,
                                                                "params": {"records": 5}}})
    env = batcher_env(database_url, redis_url, config, tmp_path / "data", NOTIFY_SOCKET=notify,
                      WATCHDOG_USEC="400000")
    proc = Proc(["run"], env, tmp_path / "daemon.log")
    got: list[str] = []
    try:
        _receive_until(sock, "READY=1", got, proc)
        _receive_until(sock, "WATCHDOG=1", got, proc)
        proc.signal(signal.SIGTERM)
        _receive_until(sock, "STOPPING=1", got, proc)
        assert proc.wait(30) == 0
    finally:
        proc.close()
        sock.close()
    states = [s for s in got if s in ("READY=1", "WATCHDOG=1", "STOPPING=1")]
    ready, stopping = states.index("READY=1"), states.index("STOPPING=1")
    assert ready < stopping and "WATCHDOG=1" in states[ready:stopping], states


def test_unit_file_verifies_with_systemd_analyze(tmp_path: Path) -> None:
    """``systemd-analyze verify`` is clean on a copy of deploy/batcher.service whose ExecStart points at
    this venv's ``batcher``; the unit keeps the DESIGN §9 settings."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, ("systemd-analyze is not installed, so deploy/batcher.service cannot be verified: "
                     "install it (Debian: apt-get install systemd)")
    batcher = Path(sys.executable).parent / "batcher"
    assert batcher.exists(), f"{batcher} is missing: install the project into the venv (pip install -e .)"
    text = UNIT.read_text()
    for setting in ("Type=notify", "WatchdogSec=", "KillMode=mixed", "KillSignal=SIGTERM", "StateDirectory=",
                    "NoNewPrivileges=yes"):
        assert re.search(rf"^{re.escape(setting)}", text, re.M), setting
    stop = int(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    assert stop > 30 + 5, "TimeoutStopSec must stay above the default grace period + 5 s"
    unit = tmp_path / "batcher.service"
    unit.write_text(re.sub(r"^ExecStart=.*$", f"ExecStart={batcher} run", text, flags=re.M))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "batcher.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
