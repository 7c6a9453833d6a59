"""`make demo` smoke test (issue 11 acceptance): start it in its own process group as a terminal would,
see succeeded runs of the synthetic, DataSync and usage jobs through the admin API, then press "Ctrl-C"
(SIGINT to the whole group) and check that everything stopped: make, the demo, the daemon, the fake
DataSync server and the embedded PostgreSQL and Redis.

The demo runs on its own data dir and a free API port; its ``demo.json`` (URLs, token, process ids) tells
the test where to look. Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batcher import embedded
from batcher.procutil import alive
from tests.e2e.procs import REPO
from tests.polling import exited_early, wait_for_sync

pytestmark = pytest.mark.timeout(120)

WANTED_JOBS = {"inventory-sync", "datasync-events", "merchant-usage"}  # synthetic, DataSync, usage


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait_until(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen[bytes],
                log: Path) -> Any:
    def tail() -> str:
        return log.read_text(errors="replace")[-4000:]

    def checked() -> Any:
        value = check()
        if not value:
            exited_early(proc.poll(), what, tail)
        return value

    return wait_for_sync(checked, timeout, 0.2, what=what, details=tail)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    """The demo's data dir; whatever still runs from it at the end is stopped."""
    data_dir = tmp_path / "demo"
    yield data_dir
    info = data_dir / "demo.json"
    if info.exists():
        pids = json.loads(info.read_text())
        for key in ("daemon_pid", "datasync_pid", "demo_pid"):
            if alive(pids[key]):
                os.killpg(pids[key], signal.SIGKILL)
    embedded.stop_all(data_dir)


def test_make_demo_runs_jobs_and_stops_on_ctrl_c(demo_dir: Path, tmp_path: Path) -> None:
    """`make demo` prints the dashboard URL, serves the dashboard, runs the synthetic, DataSync and usage
    jobs to success within a minute, and a SIGINT to its process group stops every process it started."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCHER_", "DEMO_")) and k not in ("DATABASE_URL", "REDIS_URL", "MAKEFLAGS")}
    log = tmp_path / "make-demo.log"
    with log.open("wb") as out:
        make = subprocess.Popen(["make", "--no-print-directory", "demo", f"DEMO_ARGS=--data-dir {demo_dir} --port 0"],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        info = _wait_until("demo.json", lambda: (demo_dir / "demo.json").exists()
                           and json.loads((demo_dir / "demo.json").read_text()), 60, make, log)
        base = info["dashboard"]
        _wait_until("dashboard URL on stdout", lambda: f"{base}/#token={info['token']}" in log.read_text(), 60,
                    make, log)
        with urllib.request.urlopen(base + "/", timeout=5) as page:
            assert page.status == 200 and b"batcher" in page.read()

        def succeeded_jobs() -> set[str] | None:
            runs = _get_json(f"{base}/api/batch/runs?status=succeeded&limit=100")["runs"]
            done = {r["jobName"] for r in runs}
            return done if done >= WANTED_JOBS else None

        done = _wait_until("succeeded runs of " + ", ".join(sorted(WANTED_JOBS)), succeeded_jobs, 60, make, log)
        assert done >= WANTED_JOBS
        usage = _get_json(f"{base}/api/batch/runs/latest?job=merchant-usage")["run"]
        assert usage["records"] > 0 and usage["deadLetters"] == 2  # the two malformed seeded keys

        pg_pid = _pid_in(demo_dir / "postgres" / "postmaster.pid")
        redis_pid = _pid_in(demo_dir / "redis" / "redis.pid")
        assert pg_pid and redis_pid and alive(pg_pid) and alive(redis_pid)

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole foreground group
        try:
            make.wait(timeout=45)
        except subprocess.TimeoutExpired:
            raise AssertionError("make demo did not exit within 45 s of SIGINT:\n" + log.read_text()[-4000:]) from None
        output = log.read_text(errors="replace")
        assert "demo: stopped" in output, output[-4000:]
        still = {name: pid for name, pid in [("demo", info["demo_pid"]), ("daemon", info["daemon_pid"]),
                                             ("fake DataSync", info["datasync_pid"]), ("PostgreSQL", pg_pid),
                                             ("Redis", redis_pid)] if alive(pid)}
        assert not still, f"still running after the demo stopped: {still}\n{output[-4000:]}"
        assert not (demo_dir / "demo.json").exists()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait(10)


def test_the_fake_datasync_process_logs_its_requests(tmp_path: Path) -> None:
    """`python -m batcher.fakes.datasync` (what the demo runs, stderr into .batcher-demo/datasync.log)
    logs every /events request as a JSON line — time, path, cursor, limit, status — so the log the
    README points to is no longer empty."""
    log_path = tmp_path / "datasync.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "batcher.fakes.datasync", "--api-key", "k", "--events", "30"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]
        request = urllib.request.Request(f"{url}/events?limit=10", headers={"Authorization": "Bearer k"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/events?limit=10", timeout=10)  # no key: 401

        def logged() -> list[dict[str, Any]]:
            return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]

        wait_for_sync(lambda: len(logged()) >= 2, 10, 0.05, what="two logged requests", details=lambda: str(logged()))
        lines = logged()
        assert [(e["method"], e["path"], e["limit"], e["status"]) for e in lines] == \
            [("GET", "/events", "10", 200), ("GET", "/events", "10", 401)], lines
        assert lines[0]["at"].startswith("20") and "T" in lines[0]["at"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
