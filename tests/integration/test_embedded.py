"""Embedded PostgreSQL and Redis for real (DESIGN §3): start, share, outlive a user, stop, recover.

Every test uses its own data dir and stops whatever it started (``stop_all`` in the fixture finalizer).
Processes are checked through /proc, where a zombie (nobody reaps a daemonized server here) counts as gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis

from batcher import embedded
from batcher.errors import ServiceUnavailableError
from tests.integration.embedded_user import identify
from tests.polling import wait_for

pytestmark = pytest.mark.timeout(90)
HELPER = Path(__file__).with_name("embedded_user.py")
DEADLINE = 30.0


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A fresh directory in the temp dir, removed afterwards.

    Not pytest's ``tmp_path``: as root the server runs as the ``pgserver`` user, which must traverse the
    parents of the data dir, and every pytest session starting meanwhile resets /tmp/pytest-of-root to 0700.
    """
    path = Path(tempfile.mkdtemp(prefix="batcher-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def initialized_cluster() -> AsyncIterator[Path]:
    """A PGDATA made once by the embedded start (initdb) and stopped, to copy instead of running initdb."""
    path = Path(tempfile.mkdtemp(prefix="batcher-test-template-"))
    try:
        async with embedded.services(None, "redis://unused", path, start=True):
            pass
        yield path / "postgres"
    finally:
        embedded.stop_all(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fresh_data_dir(scratch: Path) -> Iterator[Path]:
    """A data dir that does not exist yet; its servers are stopped after the test, whatever happened."""
    path = scratch / "data"
    yield path
    embedded.stop_all(path)


@pytest.fixture
def data_dir(fresh_data_dir: Path, initialized_cluster: Path) -> Path:
    """A data dir holding a stopped, initialized PostgreSQL cluster, as after an earlier run (no initdb)."""
    seed(fresh_data_dir, initialized_cluster)
    return fresh_data_dir


def seed(data_dir: Path, cluster: Path) -> None:
    """Copy a stopped cluster into ``data_dir`` keeping owners and modes (as root: the ``pgserver`` user)."""
    data_dir.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(cluster), str(data_dir / "postgres")], check=True)


def running(pid: int | None) -> bool:
    """Whether ``pid`` is a live process (not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, TypeError):
        return False
    return state not in ("Z", "X")


def process_group(pid: int | None) -> int | None:
    with contextlib.suppress(OSError, TypeError):
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[2])
    return None


def processes_in(directory: Path) -> list[int]:
    """Live processes working in ``directory`` (a postmaster and its backends work in PGDATA)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if os.readlink(proc / "cwd") == str(directory) and running(int(proc.name)):
                found.append(int(proc.name))
    return found


def pid_file(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split("\n", 1)[0])
    return None


def server_pids(data_dir: Path) -> tuple[int | None, int | None]:
    """The (postmaster, redis-server) pids the data dir's pid files name."""
    return pid_file(data_dir / "postgres" / "postmaster.pid"), pid_file(data_dir / "redis" / "redis.pid")


async def answer(urls: embedded.ServiceUrls) -> None:
    """Both servers answer: PostgreSQL ``SELECT 1`` and Redis ``PING``."""
    conn = await asyncpg.connect(urls.database_url, timeout=5)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    client = aredis.from_url(urls.redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


class User:
    """An ``embedded_user.py`` subprocess in its own session (so it has its own process group)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), DEADLINE)
        assert raw, f"helper exited with {await self.proc.wait()} before reporting"
        return dict(json.loads(raw))

    async def terminate_group(self) -> tuple[dict[str, Any], int, str]:
        """SIGTERM the helper's whole process group; its last report, exit code and log (stderr)."""
        assert self.proc.stderr is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        report = await self.line()
        logged = await asyncio.wait_for(self.proc.stderr.read(), DEADLINE)
        return report, await asyncio.wait_for(self.proc.wait(), DEADLINE), logged.decode()


Spawn = Callable[[str], Awaitable[User]]


@pytest.fixture
async def spawn(fresh_data_dir: Path) -> AsyncIterator[Spawn]:
    """Start helper processes on the test's data dir (``start`` or ``reuse``); any left running are killed."""
    users: list[User] = []

    async def start(mode: str) -> User:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPER), str(fresh_data_dir), mode,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        users.append(User(proc))
        return users[-1]

    yield start
    for user in users:
        if user.proc.returncode is None:
            user.proc.kill()
            await user.proc.wait()


async def test_start_connect_and_stop(fresh_data_dir: Path) -> None:
    """With no URLs, both servers start in a new data dir (initdb included), answer on unix sockets, and
    stop on exit."""
    data_dir = fresh_data_dir
    async with embedded.services(None, None, data_dir, start=True) as urls:
        assert urls.embedded_postgres and urls.embedded_redis
        assert urls.database_url == f"postgresql://postgres@/postgres?host={data_dir}/postgres&port=5432"
        assert urls.redis_url == f"unix://{data_dir}/redis/redis.sock"
        await answer(urls)
        pg, rd = server_pids(data_dir)
        assert running(pg) and running(rd)
    await wait_for(lambda: not running(pg) and not running(rd), DEADLINE, what="both servers stop")
    assert not (data_dir / "redis" / "redis.sock").exists()


async def test_users_share_servers_and_last_one_stops_them(data_dir: Path, spawn: Spawn) -> None:
    """A second user, in this process and in another one (reuse only), gets the same servers; they
    outlive the first user's exit and stop when the last user leaves."""
    first, second = contextlib.AsyncExitStack(), contextlib.AsyncExitStack()
    urls = await first.enter_async_context(embedded.services(None, None, data_dir, start=True))
    pids = server_pids(data_dir)
    again = await second.enter_async_context(embedded.services(None, None, data_dir, start=True))
    assert again == urls and server_pids(data_dir) == pids
    other = await spawn("reuse")
    report = await other.line()
    assert (report["database_url"], report["redis_url"]) == (urls.database_url, urls.redis_url)
    assert report["identity"] == await identify(urls) and report["identity"]["redis_pid"] == pids[1]

    await first.aclose()
    await second.aclose()
    assert server_pids(data_dir) == pids and all(running(pid) for pid in pids)
    await answer(urls)  # still served for the other process

    final, code, logged = await other.terminate_group()
    assert code == 0 and final["identity_at_cleanup"] == report["identity"]
    assert "embedded_postgres_reused" in logged and "embedded_redis_reused" in logged
    assert "embedded_postgres_stopped" in logged and "embedded_redis_stopped" in logged
    await wait_for(lambda: not any(running(pid) for pid in pids), DEADLINE, what="the last user's exit stops both")


async def test_concurrent_starts_share_one_server(fresh_data_dir: Path, spawn: Spawn) -> None:
    """Two processes starting at once in a new data dir end up on one server pair (the flock holds)."""
    data_dir = fresh_data_dir
    users = [await spawn("start") for _ in range(2)]
    reports = [await user.line() for user in users]
    assert reports[0]["identity"] is not None and reports[0] == reports[1]
    pids = server_pids(data_dir)
    for user in users:
        _, code, _ = await user.terminate_group()
        assert code == 0
    await wait_for(lambda: not any(running(pid) for pid in pids), DEADLINE, what="both servers stop")


async def test_reuse_only_without_server_fails_clearly(fresh_data_dir: Path) -> None:
    """``start=False`` with nothing running raises ServiceUnavailableError naming the data dir and the
    fixes, and starts nothing."""
    data_dir = fresh_data_dir
    with pytest.raises(ServiceUnavailableError) as err:
        async with embedded.services(None, None, data_dir, start=False):
            pass
    message = str(err.value)
    assert not data_dir.exists(), "a failed reuse created the data dir"
    assert f"no embedded PostgreSQL server is running in {data_dir}" in message
    assert "batcher run" in message and "BATCHER_DATABASE_URL" in message
    with pytest.raises(ServiceUnavailableError, match="Redis .*BATCHER_REDIS_URL"):
        async with embedded.services("postgresql://u@db.invalid/x", None, data_dir, start=False):
            pass
    assert server_pids(data_dir) == (None, None) and not (data_dir / "postgres").exists()


async def test_configured_urls_bypass_embedding(fresh_data_dir: Path) -> None:
    """Configured URLs are yielded as given and start nothing; one configured URL embeds only the other."""
    data_dir = fresh_data_dir
    db, rd = "postgresql://u@db.invalid:5432/x", "redis://cache.invalid:6379/0"
    async with embedded.services(db, rd, data_dir, start=True) as urls:
        assert urls == embedded.ServiceUrls(db, rd, embedded_postgres=False, embedded_redis=False)
        assert not data_dir.exists()
    async with embedded.services(db, None, data_dir, start=True) as urls:
        assert urls.database_url == db and not urls.embedded_postgres and urls.embedded_redis
        assert not (data_dir / "postgres").exists() and running(server_pids(data_dir)[1])


async def test_sigkill_leaves_stale_pid_files_and_next_start_recovers(data_dir: Path) -> None:
    """After both servers are killed with SIGKILL their pid files stay behind; the next start replaces
    them with new servers, including when the stale postmaster pid now belongs to another live process."""
    async with embedded.services(None, None, data_dir, start=True) as urls:
        pids = server_pids(data_dir)
        for pid in pids:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: not any(running(pid) for pid in pids), DEADLINE, what="the killed servers are gone")
    assert server_pids(data_dir) == pids  # stale files
    async with embedded.services(None, None, data_dir, start=True) as urls:
        await answer(urls)
        recovered = server_pids(data_dir)
        assert recovered[0] not in pids and recovered[1] not in pids
        os.kill(recovered[0] or 0, signal.SIGKILL)
        await wait_for(lambda: not running(recovered[0]), DEADLINE, what="the killed postmaster is gone")

    # The recycled-pid case: a live process of the server's user holds the stale postmaster's pid.
    owner = pwd.getpwnam(embedded.ROOT_PG_USER).pw_uid if os.geteuid() == 0 else None
    squatter = await asyncio.create_subprocess_exec("sleep", "120", user=owner)
    try:
        pidfile = data_dir / "postgres" / "postmaster.pid"
        lines = pidfile.read_text().split("\n")
        pidfile.write_text("\n".join([str(squatter.pid), *lines[1:]]))
        async with embedded.services(None, None, data_dir, start=True) as urls:
            await answer(urls)
            assert server_pids(data_dir)[0] != squatter.pid
    finally:
        squatter.kill()
        await squatter.wait()


async def test_sigterm_to_users_process_group_spares_servers(data_dir: Path, spawn: Spawn) -> None:
    """SIGTERM to the process group of the only process using the servers reaches that process, not the
    servers: they still answer during its cleanup, and stop once it has left."""
    user = await spawn("start")
    report = await user.line()
    assert report["identity"] is not None
    pids = server_pids(data_dir)
    assert all(process_group(pid) not in (None, user.proc.pid) for pid in pids)
    final, code, logged = await user.terminate_group()
    assert code == 0 and "embedded_postgres_started" in logged and "embedded_redis_started" in logged
    assert final["identity_at_cleanup"] == report["identity"], "servers died with the process group"
    await wait_for(lambda: not any(running(pid) for pid in pids), DEADLINE,
                   what="the servers stop after their last user")


async def test_stop_all_stops_servers_in_use(data_dir: Path) -> None:
    """``stop_all`` stops the servers even while a user is registered; that user's exit is then harmless."""
    async with embedded.services(None, None, data_dir, start=True):
        pids = server_pids(data_dir)
        await asyncio.to_thread(embedded.stop_all, data_dir)
        assert not any(running(pid) for pid in pids)
        assert not any((data_dir / f"{name}.users").exists() for name in ("postgres", "redis"))
    with pytest.raises(ServiceUnavailableError):
        async with embedded.services(None, None, data_dir, start=False):
            pass


async def test_long_data_dir_puts_sockets_in_tmp(scratch: Path, initialized_cluster: Path) -> None:
    """A data dir too deep for unix socket paths gets its sockets under the temp dir, and works."""
    data_dir = scratch / ("deep" * 20) / "data"
    await asyncio.to_thread(seed, data_dir, initialized_cluster)
    try:
        async with embedded.services(None, None, data_dir, start=True) as urls:
            assert f"host={data_dir}" not in urls.database_url and "batcher-pg-" in urls.database_url
            assert urls.redis_url.startswith("unix:///") and "batcher-redis-" in urls.redis_url
            await answer(urls)
            sockets = [Path(urls.database_url.partition("host=")[2].partition("&")[0]),
                       Path(urls.redis_url.removeprefix("unix://")).parent]
    finally:
        embedded.stop_all(data_dir)
    assert not any(path.exists() for path in sockets), "the temp socket dirs outlived their servers"


async def test_cancelled_start_leaves_no_user_behind(fresh_data_dir: Path) -> None:
    """A task cancelled while its servers are starting still unregisters, so the servers stop."""
    data_dir = fresh_data_dir
    task = asyncio.create_task(embedded.services(None, None, data_dir, start=True).__aenter__())
    await wait_for(lambda: (data_dir / "postgres.lock").exists(), DEADLINE, what="the start is under way")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    users, pgdata = data_dir / "postgres.users", data_dir / "postgres"

    def released() -> bool:  # registered, unregistered, and the server gone with its last process
        return users.is_dir() and not any(users.iterdir()) and not (pgdata / "postmaster.pid").exists()

    await wait_for(released, DEADLINE, what="the abandoned registration is released")
    await wait_for(lambda: not processes_in(pgdata), DEADLINE, what="no PostgreSQL process is left")
