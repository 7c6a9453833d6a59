"""Unit tests of batcher.ratelimit: GCRA parameters, namespace matching, the handlers' defaults under the
TOML entries, and the Lua script on the real Redis db of this test session (spacing, burst, pauses,
NOSCRIPT, cancel, unlimited)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio

from batcher.errors import RunCancelledError
from batcher.ratelimit import (
    Gcra,
    RateLimiter,
    effective_rate_limits,
    limit_for,
)
from batcher.registry import handler_rate_limits, load_registry
from batcher.settings import RateLimitSettings
from tests.polling import wait_for


@pytest.fixture(autouse=True)
def _session_loop_is_current(_session_event_loop: asyncio.AbstractEventLoop) -> None:
    """Run these tests in pytest-asyncio's session loop, where the async fixtures run (guards against a
    conftest fixture leaving another event loop current between tests)."""
    asyncio.set_event_loop(_session_event_loop)


def rl(**values: int) -> RateLimitSettings:
    return RateLimitSettings.model_validate(values)


def test_emission_interval_and_tolerance() -> None:
    """T = max(interval/max, min_spacing); tolerance = (burst-1)·T; a share divides the allowance."""
    assert Gcra.from_settings(rl(interval_ms=1000, max_in_interval=20)) == Gcra(50_000, 0)
    spaced = rl(interval_ms=1000, max_in_interval=20, min_spacing_ms=80)
    assert Gcra.from_settings(spaced).emission_us == 80_000
    assert Gcra.from_settings(rl(interval_ms=1000, max_in_interval=4, burst=3)) == Gcra(250_000, 500_000)
    assert Gcra.from_settings(rl(interval_ms=1000, max_in_interval=20), share=3).emission_us == 150_000
    # 1000 ms / 3 is rounded up: a 4th admission 3·T later falls outside the 1 s window
    assert Gcra.from_settings(rl(interval_ms=1000, max_in_interval=3)).emission_us == 333_334


def test_longest_prefix_wins_and_toml_overrides_defaults() -> None:
    """A namespace with a credential discriminator uses its provider's entry; TOML entries win."""
    defaults = handler_rate_limits(load_registry())
    limits = effective_rate_limits(defaults, {"hubspot:api:": rl(interval_ms=10_000, max_in_interval=150),
                                              "datasync:": rl(max_in_interval=10)})
    assert limit_for("hubspot:api:portal-42", limits) == ("hubspot:api:",
                                                              limits["hubspot:api:"])
    assert limits["hubspot:api:"].max_in_interval == 150
    assert limits["github:api:"] == defaults["github:api:"]
    assert limit_for("datasync:events:", limits) is not None
    assert limit_for("unknown:thing:", limits) is None


def test_shipped_handlers_declare_their_providers_defaults() -> None:
    """The built-in handlers declare defaults for HubSpot general/search, Search Console, Docker Hub and
    GitHub (collected by the registry; batcher.ratelimit names no provider)."""
    defaults = handler_rate_limits(load_registry())
    assert set(defaults) >= {"hubspot:api:", "hubspot:search:", "gsc:searchanalytics:",
                             "dockerhub:api:", "github:api:", "github:api:anonymous:"}
    assert defaults["github:api:"].max_in_interval == 5000
    assert defaults["gsc:searchanalytics:"].quota_pause_ms == 15 * 60_000


@pytest.fixture
async def aredis(redis_url: str, redis_db: redis.Redis) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def limiter(client: Any, **limits: RateLimitSettings) -> RateLimiter:
    return RateLimiter({k.replace("_", ":") + ":": v for k, v in limits.items()}, client)


async def test_script_spaces_admissions_on_the_redis_clock(aredis: redis.asyncio.Redis) -> None:
    """Burst 1 at 50/s: consecutive admissions (Redis TIME) are ≥ 20 ms apart, and 25 take ≥ 0.48 s."""
    lim = limiter(aredis, t_spacing=rl(interval_ms=1000, max_in_interval=50))
    await lim.load()
    cancelled = asyncio.Event()
    started = time.monotonic()
    stamps = [(await lim.acquire("t:spacing:", cancelled)) for _ in range(25)]
    assert all(a.shared for a in stamps)
    gaps = [b.at_us - a.at_us for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 20_000
    assert time.monotonic() - started >= 0.47


async def test_burst_admits_at_once_then_paces(aredis: redis.asyncio.Redis) -> None:
    """burst = 4 admits four requests without waiting, then paces at the emission interval."""
    lim = limiter(aredis, t_burst=rl(interval_ms=1000, max_in_interval=5, burst=4))
    await lim.load()
    cancelled = asyncio.Event()
    first = [await lim.acquire("t:burst:", cancelled) for _ in range(4)]
    assert all(a.waited_s < 0.05 for a in first)
    fifth = await lim.acquire("t:burst:", cancelled)
    assert fifth.waited_s >= 0.15


async def test_pause_is_shared_and_only_extended(aredis: redis.asyncio.Redis, redis_db: redis.Redis) -> None:
    """A pause sets paused_until (ms epoch, Redis clock) which a shorter pause does not shorten; a second
    limiter (another process) waits for it too."""
    one = limiter(aredis, t_pause=rl(max_in_interval=1000))
    other = limiter(aredis, t_pause=rl(max_in_interval=1000))
    await one.load()
    await other.load()
    await one.pause("t:pause:", 0.6)
    until = int(redis_db.get("batcher:rl:{t:pause:}:paused_until") or 0)
    await one.pause("t:pause:", 0.05)
    assert int(redis_db.get("batcher:rl:{t:pause:}:paused_until") or 0) == until
    server_ms = int(redis_db.time()[0]) * 1000
    assert until > server_ms
    admission = await other.acquire("t:pause:", asyncio.Event())
    assert admission.at_us // 1000 >= until
    assert admission.waited_s >= 0.3


async def test_noscript_reloads_the_script(aredis: redis.asyncio.Redis) -> None:
    """An unknown script SHA (a restarted Redis) is reloaded transparently."""
    lim = limiter(aredis, t_ns=rl(max_in_interval=100))
    await lim.load()
    lim._sha = "0" * 40
    assert (await lim.acquire("t:ns:", asyncio.Event())).shared
    assert lim._sha != "0" * 40 and not lim.degraded


async def test_cancel_interrupts_the_wait(aredis: redis.asyncio.Redis) -> None:
    """A limiter wait (here a 30 s pause) raises RunCancelledError promptly on cancel."""
    lim = limiter(aredis, t_cancel=rl(max_in_interval=100))
    await lim.load()
    await lim.pause("t:cancel:", 30)
    cancelled = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, cancelled.set)
    started = time.monotonic()
    with pytest.raises(RunCancelledError):
        await lim.acquire("t:cancel:", cancelled)
    assert time.monotonic() - started < 2


async def test_unlimited_namespace_is_never_paced_but_honours_a_shared_pause(redis_url: str) -> None:
    """A namespace without a rate_limits entry is admitted at once however often it asks (no pacing), yet
    a 429 pause that another process set for it in Redis holds it too (DESIGN §8: every process waits)."""
    from batcher.connections import redis_client

    other = RateLimiter({}, redis_client(redis_url))
    mine = RateLimiter({}, redis_client(redis_url))
    admissions = [await mine.acquire("free:api:", asyncio.Event()) for _ in range(100)]
    assert all(a.waited_s < 0.05 for a in admissions)
    await other.pause("free:api:", 0.3)
    started = time.monotonic()
    await mine.acquire("free:api:", asyncio.Event())
    assert time.monotonic() - started >= 0.25


async def test_pushed_pauses_spare_the_round_trip_and_still_hold_every_process(redis_url: str) -> None:
    """With the pause feed live, an unlimited namespace asks Redis once (then once per recheck interval),
    not per request; a pause another process sets reaches it through the feed and holds it (on a channel
    of this Redis db's own); a closed feed sends every admission to Redis again."""
    from batcher.connections import redis_client

    other = RateLimiter({}, redis_client(redis_url))
    mine = RateLimiter({}, redis_client(redis_url))
    mine.start_pause_feed(recheck_s=0.5)
    feed = mine._feed
    assert feed is not None
    evals: list[tuple[Any, ...]] = []
    real_eval = mine._eval

    async def counted(namespace: str, *args: Any) -> list[int]:
        evals.append((namespace, *args))
        return await real_eval(namespace, *args)

    mine._eval = counted  # type: ignore[method-assign]
    ns, never = "pushed:api:", asyncio.Event()

    async def feed_live() -> bool:
        return feed.live

    async def paused_here() -> bool:
        return mine._local.try_acquire(ns, None)[0] is False

    try:
        await wait_for(feed_live, what="the pause feed subscribed")
        started = time.monotonic()
        gc.disable()  # a full collection of the test process's heap can stall the loop ~50 ms: not a wait
        try:
            admissions = [await mine.acquire(ns, never) for _ in range(50)]
        finally:
            gc.enable()
        assert all(a.waited_s < 0.05 for a in admissions)
        assert 1 <= len(evals) <= 1 + (time.monotonic() - started) / 0.5, evals  # not one per request
        feed.receive(b'["' + ns.encode() + b'", 1000, 1000]')  # nothing left of that pause: ignored
        assert (await mine.acquire(ns, never)).waited_s < 0.05
        assert feed.channel == f"batcher:rl:pauses:db{redis_url.rsplit('/', 1)[1]}"  # pub/sub ignores dbs
        await other.pause(ns, 0.4)
        await wait_for(paused_here, what="the pushed pause")
        checks = len(evals)
        started = time.monotonic()
        await mine.acquire(ns, never)
        assert 0.2 <= time.monotonic() - started < 2.0
        assert len(evals) <= checks + 1  # at most the recheck: the pause itself came through the feed
    finally:
        await mine.close()
    assert not feed.live
    before = len(evals)
    await mine.acquire(ns, never)
    assert len(evals) == before + 1  # no feed: every admission checks Redis


async def test_redis_health_reports_ok_and_failure_without_password(redis_url: str) -> None:
    """redis_health answers (True, "ok") for our Redis, and (False, reason) within the timeout for a
    closed port, never echoing the URL's password."""
    from batcher.connections import redis_health

    assert await redis_health(redis_url, 2.0) == (True, "ok")
    started = time.monotonic()
    ok, reason = await redis_health("redis://:hunter2-secret@127.0.0.1:1/0", 0.5)
    assert not ok and reason and "hunter2-secret" not in reason
    assert time.monotonic() - started < 2
