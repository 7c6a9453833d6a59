"""Process and file-system helpers for the servers batcher runs itself (:mod:`batcher.embedded`).

Liveness by ``/proc`` (a zombie or a recycled pid is not alive), waiting with a deadline, terminating
with escalation, running a command in its own session, and private socket directories short enough for
``sun_path``. Nothing here knows PostgreSQL or Redis.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from batcher.errors import ServiceUnavailableError

log = structlog.get_logger("batcher.embedded")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS
HAVE_PROC = Path("/proc/self/stat").exists()


def proc_stat(pid: int) -> tuple[str, str, str] | None:
    """(comm, state, start time in ticks) of a Linux process, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    head, _, tail = raw.rpartition(")")
    fields = tail.split()
    return head.partition("(")[2], fields[0], fields[19]


def alive(pid: int, comm: str | None = None) -> bool:
    """Whether ``pid`` runs (zombies count as dead) and, when given, is named ``comm``."""
    if not HAVE_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    info = proc_stat(pid)
    return info is not None and info[1] not in ("Z", "X") and (comm is None or info[0] == comm)


def identity(pid: int) -> str:
    return (proc_stat(pid) or ("", "", ""))[2]


def procs_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (PostgreSQL's postmaster and backends)."""
    if not HAVE_PROC:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd") == str(directory) and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def terminate(pid: int, sig: int, comm: str) -> None:
    """Send ``sig`` and wait for the process to exit; SIGKILL it after STOP_TIMEOUT."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not wait_for(lambda: not alive(pid, comm), STOP_TIMEOUT):
        log.warning("embedded_server_killed", pid=pid, comm=comm, timeout_seconds=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid, comm), 5.0)


def run(argv: list[str], what: str, owner: tuple[int, int] | None = None) -> None:
    """Run a server tool in its own session as ``owner`` (uid, gid); raise with its output on failure."""
    kwargs: dict[str, Any] = {}
    if owner is not None:
        kwargs = {"user": owner[0], "group": owner[1], "extra_groups": []}
    with tempfile.TemporaryFile("w+") as out:  # not a pipe: a forked server could keep it open
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, timeout=START_TIMEOUT + 5, check=False, **kwargs)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceUnavailableError(f"{what} failed: {exc}") from exc
        if proc.returncode != 0:
            out.seek(0)
            raise ServiceUnavailableError(f"{what} failed (exit {proc.returncode}): {out.read()[-2000:]}")


def socket_dir(preferred: Path, longest_name: str, tag: str) -> Path:
    """``preferred`` unless a socket in it would exceed the unix socket path limit."""
    if len(str(preferred / longest_name)) <= SOCKET_PATH_MAX:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"batcher-{tag}-{digest}"


def private_dir(path: Path, owner: tuple[int, int] | None) -> None:
    """A 0700 directory of ``owner`` (default: us); refuses a symlink or another user's directory."""
    path.mkdir(mode=0o700, exist_ok=True)
    info, me = path.lstat(), os.geteuid()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (me, owner[0] if owner else me):
        raise ServiceUnavailableError(f"{path} is not a directory of the server's user; remove it")
    if owner is not None and info.st_uid == me:
        os.chown(path, *owner)
