"""The daemon as a real process (issue 3 acceptance): `python -m batcher run` starts, logs
``daemon_ready``, runs its job, and on SIGTERM stops with exit 0 and ``daemon_stopped`` — once against the
test PostgreSQL/Redis (nothing embedded may start), once on embedded servers it starts itself and must
stop afterwards.

Each daemon runs in its own session with its JSON logs (stderr) in a file; every wait polls with a
deadline; a daemon still alive when the test ends is killed with its process group.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from batcher import embedded
from batcher.procutil import alive
from tests.e2e.procs import Proc
from tests.polling import wait_for_sync

Daemon = Proc  # a `python -m batcher run` process

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
URL_NAMES = ("BATCHER_DATABASE_URL", "DATABASE_URL", "BATCHER_REDIS_URL", "REDIS_URL", "BATCHER_MONGODB_URI",
             "MONGODB_URI")
JOB_TOML = """
[jobs.proc-synthetic]
type = "synthetic"
interval_minutes = 60
[jobs.proc-synthetic.params]
records = 25
batch_size = 10
token_env = "PROC_SYNTHETIC_TOKEN"
"""
SECRET = "tok-3f9a-never-persisted"


@pytest.fixture
def start_daemon() -> Iterator[Callable[[dict[str, str], Path], Daemon]]:
    """Starts daemons; kills whatever is still alive at the end of the test."""
    started: list[Daemon] = []

    def start(env: dict[str, str], log_path: Path) -> Daemon:
        daemon = Proc(["run"], env, log_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def base_env(tmp_path: Path, data_dir: Path, config_text: str) -> dict[str, str]:
    """The parent's environment minus every database/Redis/Mongo URL and BATCHER_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHER_") and k not in URL_NAMES}
    config = tmp_path / "batcher.toml"
    config.write_text(config_text)
    env.update({"BATCHER_CONFIG": str(config), "BATCHER_DATA_DIR": str(data_dir), "BATCHER_API_PORT": "0",
                "BATCHER_LOG_FORMAT": "json", "BATCHER_TICK_SECONDS": "0.2", "BATCHER_SHUTDOWN_GRACE": "2",
                "PYTHONUNBUFFERED": "1"})
    return env


def run_of(url: str, daemon: Daemon) -> Callable[[], list[asyncpg.Record]]:
    """A poll check: the succeeded run of the test job; fails at once if the daemon died or the run
    ended otherwise."""
    def check() -> list[asyncpg.Record]:
        assert daemon.popen.poll() is None, f"daemon died:\n{daemon.tail()}"
        rows = fetch(url, "SELECT id, status, reason, records, errors FROM batch_runs "
                          "WHERE job_name = 'proc-synthetic' AND status IN ('succeeded', 'failed')")
        assert all(r["status"] == "succeeded" for r in rows), [dict(r) for r in rows]
        return rows

    return check


def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_daemon_on_external_services(sig: int, tmp_path: Path, database_url: str, redis_url: str,
                                     start_daemon: Callable[[dict[str, str], Path], Daemon]) -> None:
    """With BATCHER_DATABASE_URL/BATCHER_REDIS_URL set: daemon_ready, the file's synthetic job runs to
    `succeeded` (its 25 records written), SIGTERM (or SIGINT) → exit 0 within a few seconds with
    daemon_stopped, and no embedded server was set up in the data dir."""
    fetch(database_url, "TRUNCATE run_logs, dead_letters, checkpoints, batch_runs, batch_config, workers, "
                        "synthetic_records RESTART IDENTITY CASCADE")
    data_dir = tmp_path / "data"
    env = base_env(tmp_path, data_dir, JOB_TOML)
    env.update({"BATCHER_DATABASE_URL": database_url, "BATCHER_REDIS_URL": redis_url,
                "PROC_SYNTHETIC_TOKEN": SECRET})
    daemon = start_daemon(env, tmp_path / "daemon.log")
    ready = daemon.wait_event("daemon_ready", 20)
    assert ready["jobs"] == 1

    rows = wait_for_sync(run_of(database_url, daemon), 20, 0.1, what="a succeeded run of proc-synthetic")
    assert rows[0]["records"] == 25
    failed = fetch(database_url, "SELECT id, status, reason FROM batch_runs WHERE status = 'failed'")
    assert not failed, failed
    persisted = fetch(database_url, "SELECT (SELECT string_agg(c::text, ' ') FROM batch_config c) || "
                                    "(SELECT string_agg(r::text, ' ') FROM batch_runs r) || "
                                    "coalesce((SELECT string_agg(l::text, ' ') FROM run_logs l), '') AS t")
    assert "PROC_SYNTHETIC_TOKEN" in persisted[0]["t"], "the secret is persisted as its reference"
    assert SECRET not in persisted[0]["t"], "the secret's value was persisted"

    assert daemon.terminate_and_wait(10, sig) == 0, daemon.tail()
    assert daemon.stop_seconds < 5, f"signal → exit took {daemon.stop_seconds:.1f} s"
    names = [e.get("event") for e in daemon.events()]
    assert "daemon_stopped" in names, daemon.tail()
    assert names.index("daemon_ready") < names.index("daemon_stopped")
    assert SECRET not in daemon.log_path.read_text(), "the secret's value was logged"
    assert not any(str(n).startswith("embedded_") for n in names), names
    for trace in ("postgres", "redis", "postgres.users", "redis.users"):
        assert not (data_dir / trace).exists(), f"embedded {trace} set up despite the configured URLs"
    left = fetch(database_url, "SELECT worker_id FROM workers WHERE worker_id = $1", ready["worker_id"])
    assert left == [], "a cleanly stopped daemon leaves no workers row behind"
    running = fetch(database_url, "SELECT id FROM batch_runs WHERE status = 'running'")
    assert running == [], "a cleanly stopped daemon leaves no run `running`"


def _processes_using(path: Path) -> list[str]:
    """Live (non-zombie) processes whose command line or working directory mentions ``path``."""
    needle = str(path)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and (needle in cmdline or cwd.startswith(needle)):
            found.append(f"{entry.name}: {cmdline.strip()} (cwd {cwd})")
    return found


@pytest.fixture
def embedded_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir for embedded servers; whatever is left running in it is stopped at the end."""
    path = tmp_path / "data"
    yield path
    embedded.stop_all(path)


def test_daemon_on_embedded_servers(tmp_path: Path, embedded_data_dir: Path,
                                    start_daemon: Callable[[dict[str, str], Path], Daemon]) -> None:
    """With no database/Redis URL anywhere: the daemon starts embedded PostgreSQL and Redis in the data
    dir (logged), reaches daemon_ready, runs its job, and on SIGTERM exits 0 with daemon_stopped — and
    both embedded servers are stopped afterwards (no process left using the data dir)."""
    env = base_env(tmp_path, embedded_data_dir, JOB_TOML)
    env["PROC_SYNTHETIC_TOKEN"] = SECRET
    daemon = start_daemon(env, tmp_path / "daemon.log")
    pg = daemon.wait_event("embedded_postgres_started", 45)
    rd = daemon.wait_event("embedded_redis_started", 20)
    daemon.wait_event("daemon_ready", 20)
    assert (embedded_data_dir / "postgres" / "PG_VERSION").exists()
    assert alive(pg["pid"]) and alive(rd["pid"])

    wait_for_sync(run_of(pg["url"], daemon), 20, 0.1,
                  what="a succeeded run of proc-synthetic on embedded PostgreSQL")

    assert daemon.terminate_and_wait(15) == 0, daemon.tail()
    assert daemon.stop_seconds < 8, f"SIGTERM → exit took {daemon.stop_seconds:.1f} s"
    names = [e.get("event") for e in daemon.events()]
    assert "daemon_stopped" in names, daemon.tail()
    wait_for_sync(lambda: not alive(pg["pid"]) and not alive(rd["pid"]), 15, 0.1, what="embedded servers stopped")
    wait_for_sync(lambda: not _processes_using(embedded_data_dir), 15, 0.1,
                  what=f"no process using {embedded_data_dir}",
                  details=lambda: f"left: {_processes_using(embedded_data_dir)}")
    assert {"embedded_postgres_stopped", "embedded_redis_stopped"} <= set(names), names
