"""Real batcher processes for end-to-end tests: daemons and run-job commands as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.polling import exited_early, query_until, wait_for_sync

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, jobs: dict[str, dict[str, Any]]) -> Path:
    """A batcher.toml holding just these jobs (values as TOML literals via JSON, which TOML accepts
    for strings, numbers and booleans)."""
    lines: list[str] = []
    for name, job in jobs.items():
        lines.append(f'[jobs."{name}"]')
        for key, value in job.items():
            if key != "params":
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append(f'[jobs."{name}".params]')
        for key, value in job.get("params", {}).items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def batcher_env(database_url: str, redis_url: str, config: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BATCHER_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"BATCHER_DATABASE_URL": database_url, "BATCHER_REDIS_URL": redis_url,
                "BATCHER_CONFIG": str(config), "BATCHER_DATA_DIR": str(data_dir), "BATCHER_API_PORT": "0",
                "BATCHER_LOG_FORMAT": "json", "BATCHER_TICK_SECONDS": "0.2", "BATCHER_LEASE_SECONDS": "6",
                "BATCHER_SHUTDOWN_GRACE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class Proc:
    """A batcher subprocess in its own session, its stderr in a file, killed at cleanup if still alive."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen([sys.executable, "-m", "batcher", *args], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=self._log, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first log event called ``name``; fails when the process exits first or on timeout."""
        def found() -> dict[str, Any] | None:
            event = next((e for e in self.events() if e.get("event") == name), None)
            if event is None:
                exited_early(self.popen.poll(), name, lambda: self.log_path.read_text()[-3000:])
            return event

        event: dict[str, Any] = wait_for_sync(found, timeout, 0.05, what=f"a {name} event",
                                              details=lambda: self.log_path.read_text()[-3000:])
        return event

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate_and_wait(self, timeout: float, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait for its exit status; ``stop_seconds`` says how long it took."""
        started = time.monotonic()
        self.signal(sig)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout} s after signal {sig}:\n{self.tail()}") from None
        self.stop_seconds = time.monotonic() - started
        return code

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stdout_last_json(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        lines = [ln for ln in self.popen.stdout.read().decode().splitlines() if ln.strip()]
        return dict(json.loads(lines[-1]))

    def close(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()


async def poll(pool: asyncpg.Pool, sql: str, *args: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll a query until its first value is truthy; fail after ``timeout`` seconds."""
    return await query_until(pool, sql, *args, timeout=timeout, interval=interval)
