"""``make demo`` (``python -m batcher.demo``): a fake DataSync server and a daemon on embedded servers.

One command shows batcher working, with nothing to install or configure:

1. the fake DataSync server (:mod:`batcher.fakes.datasync`) on a free port, in its own session;
2. embedded PostgreSQL and Redis in the demo's data dir (default ``.batcher-demo``): this process
   registers as a user of both (:func:`batcher.embedded.services`), so they outlive the daemon until the
   demo ends, and seeds usage counters into that Redis before the daemon starts — the usage job's first
   run (due at once) finds them;
3. ``python -m batcher run`` in its own session, on ``<data dir>/demo.toml`` (``deploy/demo.toml`` with the
   fake's address filled in), no database or Redis URL (so it reuses the embedded servers), the API on
   ``--port`` (8080, or a free port when that is taken) with a random token;
4. the dashboard URL (carrying the token in its ``#token=`` fragment, which the page keeps in the tab and
   removes from the address bar), then every 15 s a few more DataSync events and usage increments.

Ctrl-C (SIGINT) or SIGTERM stops the daemon first (SIGTERM: it drains), then the fake, then releases the
embedded servers (the last user stops them); a child that does not stop in time is killed. The demo
exits 0 after a clean stop, 1 when the daemon or the fake died on its own. ``<data dir>/demo.json``
holds the URLs, token and process ids while it runs (the smoke test reads it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from batcher.settings import process_environment

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "deploy" / "demo.toml"
URL_PLACEHOLDER = '"DEMO_DATASYNC_URL"'
KEY_VARIABLE = "DEMO_DATASYNC_KEY"
READY_TIMEOUT = 90.0  # the first start runs initdb
STOP_TIMEOUT = 30.0
ACTIVITY_SECONDS = 15.0
MERCHANTS = [f"m{n:03d}" for n in range(1, 41)]
METRICS = ("api_calls", "orders", "storage_mb")
# Variables that would point the demo's daemon elsewhere or change its jobs: never passed on.
_DROPPED = ("DATABASE_URL", "REDIS_URL", "MONGODB_URI", "MONGODB_PARAMS", "ENABLE_USAGE_AGGREGATION",
            "USAGE_AGGREGATION_INTERVAL")


def say(message: str) -> None:
    print(message, flush=True)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(method: str, url: str, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def usage_seed(today: dt.date) -> dict[str, str]:
    """Counters for today and yesterday (UTC), plus two keys the usage job dead-letters."""
    rng = random.Random(11)
    keys = {f"usage:{m}:{day.isoformat()}:{metric}": str(rng.randint(1, 5000))
            for day in (today - dt.timedelta(days=1), today) for m in MERCHANTS for metric in METRICS}
    keys[f"usage:acme:eu:{today.isoformat()}:orders"] = "7"  # a merchant id with ':' (malformed key)
    keys[f"usage:m999:{today.isoformat()}:orders"] = "12.5"  # not an integer
    return keys


async def seed_redis(redis_url: str) -> int:
    from batcher.connections import redis_client

    client = redis_client(redis_url)
    try:
        seed = usage_seed(dt.datetime.now(dt.UTC).date())
        await client.mset(seed)  # type: ignore[arg-type]  # types-redis wants a narrower mapping type
        return len(seed)
    finally:
        await client.aclose()  # type: ignore[attr-defined]  # types-redis 4.6 predates aclose


async def bump_counters(redis_url: str, rng: random.Random) -> None:
    from batcher.connections import redis_client

    client = redis_client(redis_url)
    try:
        today = dt.datetime.now(dt.UTC).date().isoformat()
        pipe = client.pipeline(transaction=False)
        for merchant in rng.sample(MERCHANTS, 5):
            pipe.incrby(f"usage:{merchant}:{today}:{rng.choice(METRICS)}", rng.randint(1, 50))
        await pipe.execute()
    finally:
        await client.aclose()  # type: ignore[attr-defined]  # types-redis 4.6 predates aclose


class Child:
    """A child process in its own session (a terminal's Ctrl-C reaches the demo only), output in a file."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    @classmethod
    async def start(cls, name: str, argv: list[str], log_path: Path, env: dict[str, str],
                    stdout_pipe: bool = False) -> Child:
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else log, stderr=log, start_new_session=True)
        return cls(name, proc, log_path)

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, timeout: float) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL its process group."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                say(f"demo: {self.name} did not stop within {timeout:g} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        return self.proc.returncode if self.proc.returncode is not None else -1

    def tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""


async def start_fake(data_dir: Path, port: int, key: str) -> tuple[Child, str]:
    argv = [sys.executable, "-m", "batcher.fakes.datasync", "--port", str(port), "--api-key", key,
            "--events", "4000", "--latency-ms", "20", "--invalid-every", "450", "--overlap", "3"]
    fake = await Child.start("fake DataSync", argv, data_dir / "datasync.log", process_environment(), stdout_pipe=True)
    assert fake.proc.stdout is not None
    try:
        line = await asyncio.wait_for(fake.proc.stdout.readline(), 30)
        url = str(json.loads(line)["url"])
    except (TimeoutError, ValueError, KeyError) as exc:
        await fake.stop(5)
        raise SystemExit(f"demo: the fake DataSync server did not start ({exc!r}):\n{fake.tail()}") from None
    return fake, url


def write_config(template: Path, target: Path, datasync_url: str) -> None:
    text = template.read_text()
    if URL_PLACEHOLDER not in text:
        raise SystemExit(f"demo: {template} has no {URL_PLACEHOLDER} for the fake DataSync address")
    target.write_text(text.replace(URL_PLACEHOLDER, json.dumps(datasync_url)))


def daemon_env(config: Path, data_dir: Path, port: int, token: str, key: str) -> dict[str, str]:
    env = {k: v for k, v in process_environment().items() if not k.startswith("BATCHER_") and k not in _DROPPED}
    env.update({"BATCHER_CONFIG": str(config), "BATCHER_DATA_DIR": str(data_dir), "BATCHER_API_HOST": "127.0.0.1",
                "BATCHER_API_PORT": str(port), "BATCHER_API_TOKEN": token, "BATCHER_LOG_FORMAT": "json",
                KEY_VARIABLE: key, "PYTHONUNBUFFERED": "1"})
    return env


async def wait_ready(base: str, daemon: Child, stop: asyncio.Event) -> bool:
    """Poll /healthz until the daemon's loop ticks; False when it exited or the demo is stopping."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and daemon.running and not stop.is_set():
        with contextlib.suppress(OSError, ValueError):
            if (await asyncio.to_thread(_http, "GET", f"{base}/healthz", 2.0)).get("alive"):
                return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    return False


async def activity(fake_url: str, redis_url: str, stop: asyncio.Event) -> None:
    """Every few seconds: more DataSync events and some usage increments, so later runs have work."""
    rng = random.Random()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ACTIVITY_SECONDS)
            return
        with contextlib.suppress(OSError, ValueError):
            await asyncio.to_thread(_http, "POST", f"{fake_url}/_control/append?n={rng.randint(50, 300)}")
        with contextlib.suppress(Exception):
            await bump_counters(redis_url, rng)


def banner(dashboard: str, token: str, fake_url: str, data_dir: Path, port_note: str) -> str:
    return "\n".join([
        "",
        "batcher demo is running" + port_note,
        f"  dashboard      {dashboard}/#token={token}",
        f"  API token      {token}   (the link hands it to the page, which keeps it in that tab only)",
        f"  admin API      {dashboard}/api/batch/status   metrics {dashboard}/metrics",
        f"  fake DataSync  {fake_url}   (more events every {ACTIVITY_SECONDS:g} s)",
        f"  data dir       {data_dir}   (embedded PostgreSQL and Redis; logs daemon.log, datasync.log)",
        "Runs appear within a minute. Press Ctrl-C to stop everything.",
        "",
    ])


async def run_demo(args: argparse.Namespace) -> int:
    from batcher import embedded
    from batcher.logs import configure_logging

    configure_logging("console", "warning")  # this process's own log lines: problems only, on stderr

    data_dir = Path(args.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    port, port_note = args.port, ""
    if port == 0 or not _port_free(port):
        port, port_note = _free_port(), (f" (port {args.port} is taken)" if port else "")
    token = args.token or secrets.token_urlsafe(12)
    key = secrets.token_urlsafe(12)
    base = f"http://127.0.0.1:{port}"

    say(f"demo: starting the fake DataSync server and embedded PostgreSQL/Redis in {data_dir} …")
    fake, fake_url = await start_fake(data_dir, args.fake_port, key)
    daemon: Child | None = None
    failed = False
    try:
        async with embedded.services(None, None, data_dir, start=True) as urls:
            seeded = await seed_redis(urls.redis_url)
            say(f"demo: seeded {seeded} usage counters into the embedded Redis")
            config = data_dir / "demo.toml"
            write_config(Path(args.config), config, fake_url)
            daemon = await Child.start("daemon", [sys.executable, "-m", "batcher", "run"], data_dir / "daemon.log",
                                       daemon_env(config, data_dir, port, token, key))
            (data_dir / "demo.json").write_text(json.dumps({
                "dashboard": base, "token": token, "datasync_url": fake_url, "demo_pid": os.getpid(),
                "daemon_pid": daemon.proc.pid, "datasync_pid": fake.proc.pid}, indent=2))
            if await wait_ready(base, daemon, stop):
                say(banner(base, token, fake_url, data_dir, port_note))
                busy = asyncio.ensure_future(activity(fake_url, urls.redis_url, stop))
                ends = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(daemon.proc.wait()),
                        asyncio.ensure_future(fake.proc.wait())]
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
                stop.set()
                for end in ends:
                    end.cancel()
                await asyncio.gather(busy, *ends, return_exceptions=True)
            if not daemon.running or not fake.running:
                failed = True
                dead = daemon if not daemon.running else fake
                say(f"demo: the {dead.name} exited on its own (status {dead.proc.returncode}); its log:\n"
                    f"{dead.tail()}")
            elif not stop.is_set():
                failed = True
                say(f"demo: the daemon was not ready within {READY_TIMEOUT:g} s; its log:\n{daemon.tail()}")
            say("demo: stopping the daemon …")
            status = await daemon.stop(STOP_TIMEOUT)
            say(f"demo: daemon stopped (status {status}); stopping the fake DataSync server and the embedded servers …")
            await fake.stop(10)
    finally:
        if daemon is not None:
            await daemon.stop(STOP_TIMEOUT)
        await fake.stop(10)
        (data_dir / "demo.json").unlink(missing_ok=True)
    say("demo: stopped")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batcher.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=process_environment().get("DEMO_DATA_DIR", str(REPO / ".batcher-demo")),
                        help="embedded servers, logs and the generated config (default: .batcher-demo)")
    parser.add_argument("--port", type=int, default=int(process_environment().get("DEMO_PORT", "8080")),
                        help="the dashboard/API port (default 8080; a free one when taken; 0: any free port)")
    parser.add_argument("--fake-port", type=int, default=0, help="the fake DataSync port (default: any free port)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the demo config template")
    parser.add_argument("--token", default=process_environment().get("DEMO_TOKEN"),
                        help="the API token (default: random)")
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(run_demo(args)))


if __name__ == "__main__":
    main()
