"""Three OS processes share one rate-limit namespace through the Redis GCRA of this test session's db."""

from __future__ import annotations

import asyncio
import bisect
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from aiohttp import web

from tests.polling import wait_for
from tests.serving import serve


@pytest.fixture(autouse=True)
def _session_loop_is_current(_session_event_loop: asyncio.AbstractEventLoop) -> None:
    """Run these tests in pytest-asyncio's session loop, where the async fixtures run (guards against a
    conftest fixture leaving another event loop current between tests)."""
    asyncio.set_event_loop(_session_event_loop)


WORKER = Path(__file__).with_name("ratelimit_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def spawn(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / f"{name}.jsonl"
    proc = subprocess.Popen([sys.executable, str(WORKER), "--out", str(out), "--worker", name,
                             "--go", str(tmp_path / "go"), *args], cwd=ROOT, stderr=subprocess.PIPE)
    return proc, out


async def start_together(tmp_path: Path, spawned: list[tuple[subprocess.Popen[bytes], Path]]) -> float:
    """Wait (polling, with a deadline) until every worker is ready, then give them one start time."""
    def all_ready() -> bool:
        if all(Path(f"{out}.ready").exists() for _, out in spawned):
            return True
        if any(p.poll() is not None for p, _ in spawned):
            pytest.fail("a worker exited before it got ready")
        return False

    await wait_for(all_ready, 30, 0.05, what="every worker ready")
    start = time.time() + 0.3
    (tmp_path / "go.tmp").write_text(repr(start))
    (tmp_path / "go.tmp").rename(tmp_path / "go")
    return start


async def wait_all(procs: list[subprocess.Popen[bytes]], deadline_s: float) -> None:
    """Poll the processes until all have exited (fail after ``deadline_s``, killing them)."""
    try:
        await wait_for(lambda: all(p.poll() is not None for p in procs), deadline_s, 0.1,
                       what="every worker process finished")
    except AssertionError:
        for p in procs:
            p.kill()
        raise
    for p in procs:
        assert p.returncode == 0, p.stderr.read().decode() if p.stderr else p.returncode


def max_in_window(stamps_us: list[int], window_us: int) -> int:
    """The largest number of stamps in any half-open window [t, t + window) starting at a stamp."""
    stamps = sorted(stamps_us)
    return max((bisect.bisect_left(stamps, t + window_us) - i for i, t in enumerate(stamps)), default=0)


async def test_three_processes_never_exceed_the_limit(redis_url: str, redis_db: redis.Redis,
                                                      tmp_path: Path) -> None:
    """Three processes × 4 tasks hammer a 20 requests/s namespace for 10 s: the limiter's own admission
    times (Redis TIME) never show more than 20 in any 1-second window, and the processes together get
    at least 95 % of the 200 admissions the limit allows."""
    duration, rate = 10.0, 20
    common = ["--redis", redis_url, "--namespace", "itest:three:", "--max-in-interval", str(rate),
              "--duration", str(duration), "--tasks", "4"]
    spawned = [spawn(tmp_path, f"p{i}", *common) for i in range(3)]
    await start_together(tmp_path, spawned)
    await wait_all([p for p, _ in spawned], deadline_s=duration + 20)
    rows = [json.loads(line) for _, out in spawned for line in out.read_text().splitlines()]
    per_process = [len(out.read_text().splitlines()) for _, out in spawned]
    stamps = [r["at_us"] for r in rows]
    assert all(r["shared"] for r in rows)
    assert all(n > 0 for n in per_process), per_process
    busiest = max_in_window(stamps, 1_000_000)
    print(f"admissions={len(stamps)} per_process={per_process} busiest_1s_window={busiest}")
    assert busiest <= rate
    assert len(stamps) >= 0.95 * rate * duration, (len(stamps), per_process)


class FakeApi:
    """Answers 200, except one 429 (``Retry-After: 2``) on the 30th request; records every arrival."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str, int]] = []

    async def handle(self, request: web.Request) -> web.Response:
        status = 429 if len(self.arrivals) == 29 else 200
        self.arrivals.append((time.time(), request.headers.get("X-Worker", "?"), status))
        if status == 429:
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "2"})
        return web.json_response({"ok": True})


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[FakeApi, str]]:
    api = FakeApi()
    app = web.Application()
    app.router.add_get("/items", api.handle)
    async with serve(app) as url:
        yield api, f"{url}/items"


@pytest.mark.parametrize("max_in_interval", [20, 0], ids=["limited", "unlimited"])
async def test_a_429_in_one_process_pauses_all_three(redis_url: str, redis_db: redis.Redis,
                                                     fake_api: tuple[FakeApi, str], tmp_path: Path,
                                                     max_in_interval: int) -> None:
    """One process receives a 429 with Retry-After: 2; the shared pause stops all three processes (no
    request reaches the API from any of them until the reset time), then all three resume. Unlimited
    (no rate_limits entry), the processes ask Redis only now and then: the pause reaches them pushed
    over pub/sub."""
    api, url = fake_api
    common = ["--mode", "http", "--url", url, "--redis", redis_url, "--namespace", "itest:pause:",
              "--max-in-interval", str(max_in_interval), "--duration", "5" if max_in_interval else "3.5",
              "--tasks", "2"]
    spawned = [spawn(tmp_path, f"w{i}", *common) for i in range(3)]
    await start_together(tmp_path, spawned)
    await wait_all([p for p, _ in spawned], deadline_s=25)
    throttled = [a for a in api.arrivals if a[2] == 429]
    assert len(throttled) == 1
    t429, victim, _ = throttled[0]
    grace = 0.3  # requests admitted before the pause was written may still be on their way
    during = [a for a in api.arrivals if t429 + grace < a[0] < t429 + 2.0 - 0.05]
    assert during == [], f"requests during the pause: {during}"
    after = {w for t, w, _ in api.arrivals if t >= t429 + 1.9}
    assert after == {"w0", "w1", "w2"}
    assert victim in {"w0", "w1", "w2"}
    before = {w for t, w, _ in api.arrivals if t < t429}
    assert before == {"w0", "w1", "w2"}
