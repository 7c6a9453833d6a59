"""Benchmark: three processes share one rate limit against a fake API that enforces it strictly.

The fake API (aiohttp on 127.0.0.1) answers 429 whenever its own sliding 1-second window already holds
``LIMIT`` accepted requests. Three worker processes (4 tasks each) call it through ``batcher.http``:

- **shared**: the Redis GCRA paced at 97 % of the fake's limit (network jitter needs the margin) —
  goals: utilisation of the fake's limit ≥ 95 %, 429s received = 0;
- **baseline**: the same processes without a limiter (429 pauses per process only), for comparison.

Run: ``.venv/bin/python bench/ratelimit.py`` (≈ 35 s). Redis: ``REDIS_URL`` if set (keys are namespaced
per run, nothing is flushed), else 127.0.0.1:6379 with a free db among 1–9 claimed like the tests do
(``SET lock token NX PX``, flushed keeping the lock, renewed while running, released at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from common import BASE_REDIS, RedisDbLock, emit_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIMIT = 50  # the fake API's limit: requests per sliding second
PACE = 0.97  # the limiter's share of it


class FakeApi:
    """Accepts at most ``LIMIT`` requests in any sliding second; counts what it accepted and refused."""

    def __init__(self) -> None:
        self.window: collections.deque[float] = collections.deque()
        self.accepted: list[float] = []
        self.refused = 0

    async def handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        while self.window and self.window[0] <= now - 1.0:
            self.window.popleft()
        if len(self.window) >= LIMIT:
            self.refused += 1
            retry = max(0.001, self.window[0] + 1.0 - now)
            return web.json_response({"error": "rate"}, status=429, headers={"Retry-After": f"{retry:.3f}"})
        self.window.append(now)
        self.accepted.append(time.time())
        return web.json_response({"ok": True, "n": len(self.accepted)})


async def worker(args: argparse.Namespace) -> None:
    """One process: ``--tasks`` coroutines GET the fake API until the end time."""
    from batcher.errors import TransientError
    from batcher.http import HttpRuntime
    from batcher.logs import configure_logging
    from batcher.settings import RateLimitSettings

    configure_logging("json", "error")  # the baseline's 429 warnings would drown the report

    limits = {} if args.baseline else {args.namespace: RateLimitSettings.model_validate(
        {"interval_ms": 10_000, "max_in_interval": round(LIMIT * PACE * 10)})}
    runtime = HttpRuntime(limits, args.redis, backoff_base_s=0.01, backoff_max_s=0.1)
    await runtime.start()
    counters = _Counters()
    client = runtime.client(args.namespace, accounting=counters, cancelled=asyncio.Event())
    Path(args.out + ".ready").touch()
    go = Path(args.go)
    while not go.exists():  # noqa: ASYNC110 - the parent process creates it
        await asyncio.sleep(0.01)
    start = float(go.read_text())
    end = start + args.duration
    await asyncio.sleep(max(0.0, start - time.time()))

    async def loop() -> None:
        while time.time() < end:
            with contextlib.suppress(TransientError):  # 429s beyond the retry cap (baseline)
                await client.get_json(args.url)

    await asyncio.gather(*(loop() for _ in range(args.tasks)))
    await runtime.close()
    Path(args.out).write_text(json.dumps({"api_calls": counters.api_calls}))


class _Counters:
    def __init__(self) -> None:
        self.api_calls = 0

    def add_api_call(self, n: int = 1) -> None:
        self.api_calls += n

    def add_ingress_bytes(self, n: int) -> None:
        pass


async def run_phase(name: str, redis_url: str, duration: float, baseline: bool) -> dict[str, Any]:
    """Serve a fresh fake API, run three workers against it, and measure what the fake saw."""
    api = FakeApi()
    app = web.Application()
    app.router.add_get("/items", api.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    tmp = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    namespace = f"bench:{name}:{uuid.uuid4().hex[:8]}"
    outs = [str(tmp / f"w{i}.json") for i in range(3)]
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--worker", "--redis", redis_url, "--namespace", namespace,
        "--url", f"http://{host}:{port}/items", "--out", out, "--go", str(tmp / "go"),
        "--duration", str(duration), *(["--baseline"] if baseline else [])) for out in outs]
    deadline = time.monotonic() + 30
    while not all(Path(o + ".ready").exists() for o in outs):
        if time.monotonic() > deadline:
            raise SystemExit("workers did not get ready")
        await asyncio.sleep(0.05)
    start = time.time() + 0.3
    (tmp / "go.tmp").write_text(repr(start))
    (tmp / "go.tmp").rename(tmp / "go")
    await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), duration + 20)
    await runner.cleanup()
    calls = sum(json.loads(Path(o).read_text())["api_calls"] for o in outs)
    shutil.rmtree(tmp, ignore_errors=True)
    served = sum(1 for t in api.accepted if start <= t < start + duration)
    return {"phase": name, "duration_s": duration, "served": served, "allowance": LIMIT * duration,
            "utilisation": served / (LIMIT * duration), "429s": api.refused, "api_calls": calls}


async def bench(redis_url: str) -> list[dict[str, Any]]:
    return [await run_phase("shared", redis_url, 15.0, baseline=False),
            await run_phase("baseline", redis_url, 8.0, baseline=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    for name in ("--redis", "--namespace", "--url", "--out", "--go"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=15.0, help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return
    lock = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        lock = RedisDbLock(BASE_REDIS)
        redis_url = lock.acquire()
    try:
        results = asyncio.run(bench(redis_url))
    finally:
        if lock is not None:
            lock.release()
    print(f"fake API limit: {LIMIT} requests per sliding second; limiter paced at {PACE:.0%}; 3 processes")
    for r in results:
        print(f"{r['phase']:>8}: served {r['served']}/{r['allowance']:.0f} in {r['duration_s']:.0f} s = "
              f"{r['utilisation']:.1%} utilisation, {r['429s']} × 429, {r['api_calls']} API calls")
    shared = results[0]
    ok = shared["utilisation"] >= 0.95 and shared["429s"] == 0
    print("goal (shared: utilisation ≥ 95 %, 0 × 429):", "met" if ok else "NOT met")
    alone = results[1]
    emit_result("ratelimit: 3 processes sharing a limit paced at 97 % of a fake API's window",
                100 * shared["utilisation"], "% of the limit", goal="≥ 95 %, 0 × 429", met=ok,
                note=f"{shared['429s']} × 429; without the shared limiter {alone['429s']} of {alone['api_calls']} "
                     "calls answered 429")


if __name__ == "__main__":
    main()
