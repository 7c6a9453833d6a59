"""Unit tests of batcher.http with aioresponses: retries, backoff, 4xx vs 5xx, idempotency, 429s, cancel.

No Redis here (``redis_url=None``): the limiter is the in-process one, which these tests do not exercise
beyond the 429 pause. Backoff is scaled down so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aioresponses import aioresponses
from structlog.testing import capture_logs

from batcher.context import RunState as Counters  # the runner's own RunAccounting
from batcher.errors import PermanentError, RunCancelledError, TransientError
from batcher.http import HttpClientError, HttpRuntime, HttpStatusError, NamespaceClient
from batcher.settings import RateLimitSettings


@pytest.fixture(autouse=True)
def _session_loop_is_current(_session_event_loop: asyncio.AbstractEventLoop) -> None:
    """Run these tests in pytest-asyncio's session loop, where the async fixtures run (guards against a
    conftest fixture leaving another event loop current between tests)."""
    asyncio.set_event_loop(_session_event_loop)


URL = "https://api.example.test/v1/items"
URL_RE = re.compile(r"^https://api\.example\.test/v1/items.*$")


@pytest.fixture
async def runtime() -> AsyncIterator[HttpRuntime]:
    limits = {"test:three:": RateLimitSettings.model_validate({"interval_ms": 1, "max_attempts": 3})}
    rt = HttpRuntime(limits, None, backoff_base_s=0.001, backoff_max_s=0.005, max_429_retries=3)
    await rt.start()
    yield rt
    await rt.close()


def client(rt: HttpRuntime, ns: str = "test:plain:",
           cancelled: asyncio.Event | None = None) -> tuple[NamespaceClient, Counters]:
    counters = Counters()
    return rt.client(ns, accounting=counters, cancelled=cancelled or asyncio.Event()), counters


async def test_get_json_parses_and_counts(runtime: HttpRuntime) -> None:
    """A 200 is parsed from the raw bytes; one attempt is one API call and its body is ingress."""
    c, counters = client(runtime)
    with aioresponses() as m:
        m.get(URL, status=200, body=b'{"items": [1, 2]}')
        assert await c.get_json(URL) == {"items": [1, 2]}
    assert counters.api_calls == 1
    assert counters.ingress_bytes == len(b'{"items": [1, 2]}')


async def test_5xx_is_retried_and_every_attempt_counts(runtime: HttpRuntime) -> None:
    """500 and 502 are retried with backoff; the third attempt succeeds; three API calls are counted."""
    c, counters = client(runtime)
    with aioresponses() as m:
        m.get(URL, status=500)
        m.get(URL, status=502)
        m.get(URL, status=200, payload={"ok": True})
        assert await c.get_json(URL) == {"ok": True}
    assert counters.api_calls == 3


async def test_5xx_exhausts_the_namespace_max_attempts(runtime: HttpRuntime) -> None:
    """A namespace with max_attempts = 3 gives up after 3 attempts with a TransientError."""
    c, counters = client(runtime, "test:three:")
    with aioresponses() as m:
        m.get(URL_RE, status=503, repeat=True)
        with pytest.raises(HttpClientError) as info:
            await c.get_json(URL)
    assert isinstance(info.value, TransientError)
    assert "after 3 attempts" in str(info.value)
    assert counters.api_calls == 3


async def test_connection_errors_and_timeouts_are_retried(runtime: HttpRuntime) -> None:
    """A connection reset and a timeout are retried like a 5xx."""
    c, counters = client(runtime)
    with aioresponses() as m:
        m.get(URL, exception=aiohttp.ServerDisconnectedError())
        m.get(URL, exception=TimeoutError())
        m.get(URL, status=200, payload=[1])
        assert await c.get_json(URL) == [1]
    assert counters.api_calls == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_4xx_is_permanent_and_not_retried(runtime: HttpRuntime, status: int) -> None:
    """Other 4xx (401/403 included, without OAuth) raise a PermanentError with the status, once."""
    c, counters = client(runtime)
    with aioresponses() as m:
        m.get(URL, status=status, body=b'{"error": "nope", "access_token": "tok-secret-123"}')
        with pytest.raises(HttpStatusError) as info:
            await c.get_json(URL)
    assert isinstance(info.value, PermanentError)
    assert info.value.status == status
    assert "nope" in str(info.value) and "tok-secret-123" not in str(info.value)
    assert counters.api_calls == 1


async def test_post_is_not_retried_unless_idempotent(runtime: HttpRuntime) -> None:
    """A POST that meets a 500 fails after one attempt; the same POST marked idempotent is retried."""
    c, counters = client(runtime)
    with aioresponses() as m:
        m.post(URL, status=500)
        with pytest.raises(HttpClientError, match="not marked idempotent"):
            await c.request_json("POST", URL, json={"q": 1})
    assert counters.api_calls == 1
    with aioresponses() as m:
        m.post(URL, status=500)
        m.post(URL, status=200, payload={"done": 1})
        assert await c.request_json("POST", URL, json={"q": 1}, idempotent=True) == {"done": 1}
    assert counters.api_calls == 3


async def test_patch_connection_reset_is_not_retried(runtime: HttpRuntime) -> None:
    """PATCH follows the POST rule: a reset is not retried unless the call is marked idempotent."""
    c, counters = client(runtime)
    with aioresponses() as m:
        m.patch(URL, exception=aiohttp.ServerDisconnectedError())
        with pytest.raises(HttpClientError):
            await c.request_json("PATCH", URL, json={})
    assert counters.api_calls == 1


async def test_429_pauses_then_retries_the_same_request(runtime: HttpRuntime) -> None:
    """A 429 with Retry-After pauses the namespace that long, then the same request is sent again
    (a POST too: a 429 means it was not processed)."""
    c, counters = client(runtime)
    with aioresponses() as m:
        m.post(URL, status=429, headers={"Retry-After": "0.3"})
        m.post(URL, status=200, payload={"ok": 1})
        started = time.monotonic()
        assert await c.request_json("POST", URL, json={}) == {"ok": 1}
        assert time.monotonic() - started >= 0.29
    assert counters.api_calls == 2


async def test_on_throttled_sets_the_pause_of_a_429_without_headers(runtime: HttpRuntime) -> None:
    """``on_throttled`` sees the 429 body; the pause it returns is used when the response names none
    (HubSpot's search 429s carry no Retry-After), then the same request is sent again."""
    c, counters = client(runtime)
    seen: list[int] = []

    def hook(response: object) -> float:
        seen.append(getattr(response, "status", 0))
        return 0.3

    with aioresponses() as m:
        m.post(URL, status=429, payload={"policyName": "TEN_SECONDLY_ROLLING"})
        m.post(URL, status=200, payload={"ok": 1})
        started = time.monotonic()
        assert await c.request_json("POST", URL, json={}, on_throttled=hook) == {"ok": 1}
        assert time.monotonic() - started >= 0.29
    assert seen == [429] and counters.api_calls == 2


async def test_on_throttled_raising_ends_the_request_without_a_retry(runtime: HttpRuntime) -> None:
    """A quota no pause fixes (HubSpot's DAILY policy): the hook's error ends the request after one call."""
    c, counters = client(runtime)

    def hook(response: object) -> float:
        raise PermanentError("daily quota used up")

    with aioresponses() as m:
        m.get(URL_RE, status=429, payload={"policyName": "DAILY"}, repeat=True)
        with pytest.raises(PermanentError, match="daily quota used up"):
            await c.get_json(URL, on_throttled=hook)
    assert counters.api_calls == 1


async def test_github_style_403_with_remaining_zero_is_a_rate_limit(runtime: HttpRuntime) -> None:
    """403 with X-RateLimit-Remaining: 0 (GitHub's primary limit) is handled like a 429."""
    c, _ = client(runtime)
    with aioresponses() as m:
        m.get(URL, status=403, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0"})
        m.get(URL, status=200, payload=1)
        assert await c.get_json(URL) == 1


async def test_consecutive_429s_are_capped(runtime: HttpRuntime) -> None:
    """After max_429_retries (3 here) retries the request fails with a TransientError."""
    c, counters = client(runtime)
    with aioresponses() as m:
        m.get(URL_RE, status=429, headers={"Retry-After": "0"}, repeat=True)
        with pytest.raises(HttpClientError, match="still rate limited"):
            await c.get_json(URL)
    assert counters.api_calls == 4


async def test_garbage_retry_headers_use_the_default_and_warn() -> None:
    """Unparseable Retry-After / X-RateLimit-Reset: the default pause is used and a warning logged."""
    rt = HttpRuntime({}, None, default_retry_after_s=0.2)
    await rt.start()
    try:
        c, _ = client(rt)
        with aioresponses() as m, capture_logs() as logs:
            m.get(URL, status=429, headers={"Retry-After": "soon-ish", "X-RateLimit-Reset": "tomorrow"})
            m.get(URL, status=200, payload=2)
            started = time.monotonic()
            assert await c.get_json(URL) == 2
            assert time.monotonic() - started >= 0.19
    finally:
        await rt.close()
    warnings = [e for e in logs if e["event"] == "retry_after_unparseable"]
    assert {w["header"].split("=")[0] for w in warnings} == {"Retry-After", "X-RateLimit-Reset"}


async def test_cancel_interrupts_a_backoff_wait() -> None:
    """A run cancelled during a long backoff raises RunCancelledError promptly."""
    rt = HttpRuntime({}, None, backoff_base_s=30, backoff_max_s=30)
    await rt.start()
    cancelled = asyncio.Event()
    c, _ = client(rt, cancelled=cancelled)
    try:
        with aioresponses() as m:
            m.get(URL_RE, status=500, repeat=True)
            asyncio.get_running_loop().call_later(0.1, cancelled.set)
            started = time.monotonic()
            with pytest.raises(RunCancelledError):
                await c.get_json(URL)
            assert time.monotonic() - started < 5
    finally:
        await rt.close()


async def test_cancel_interrupts_a_429_pause(runtime: HttpRuntime) -> None:
    """A 429 pause of 60 s is cut short by the cancel signal."""
    cancelled = asyncio.Event()
    c, _ = client(runtime, cancelled=cancelled)
    with aioresponses() as m:
        m.get(URL, status=429, headers={"Retry-After": "60"})
        asyncio.get_running_loop().call_later(0.1, cancelled.set)
        started = time.monotonic()
        with pytest.raises(RunCancelledError):
            await c.get_json(URL)
        assert time.monotonic() - started < 2


async def test_non_json_body_is_an_invalid_response(runtime: HttpRuntime) -> None:
    """A 200 whose body is not JSON raises InvalidResponseError (a TransientError)."""
    from batcher.http import InvalidResponseError

    c, _ = client(runtime)
    with aioresponses() as m:
        m.get(URL, status=200, body=b"<html>maintenance</html>")
        with pytest.raises(InvalidResponseError):
            await c.get_json(URL)


async def test_prometheus_counters_use_a_bounded_namespace_label(runtime: HttpRuntime) -> None:
    """API calls, ingress bytes and 429s are counted per namespace, labelled by "provider:endpoint:"
    only, so credential discriminators never become label values."""
    from prometheus_client import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"namespace": "metrics:test:"}) or 0.0

    before = [sample(n) for n in ("batcher_http_api_calls_total", "batcher_http_ingress_bytes_total",
                                  "batcher_http_rate_limited_total")]
    c, _ = client(runtime, "metrics:test:account-1234")
    with aioresponses() as m:
        m.get(URL, status=429, headers={"Retry-After": "0"})
        m.get(URL, status=200, body=b"[1, 2, 3]")
        assert await c.get_json(URL) == [1, 2, 3]
    after = [sample(n) for n in ("batcher_http_api_calls_total", "batcher_http_ingress_bytes_total",
                                 "batcher_http_rate_limited_total")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, len(b"[1, 2, 3]"), 1]  # the 429 had no body
    assert REGISTRY.get_sample_value("batcher_http_api_calls_total",
                                     {"namespace": "metrics:test:account-1234"}) is None


async def test_get_json_validate_refetches_an_invalid_envelope(runtime: HttpRuntime) -> None:
    """get_json(validate=…): an envelope that fails validation is fetched again like a 5xx; the error
    after the last attempt names the field but not the offending values."""
    from pydantic import BaseModel

    class Page(BaseModel):
        results: list[int]

    c, counters = client(runtime, "test:three:")
    with aioresponses() as m:
        m.get(URL, status=200, payload={"results": "oops"})
        m.get(URL, status=200, payload={"results": [1]})
        assert (await c.get_json(URL, validate=Page.model_validate)).results == [1]
    assert counters.api_calls == 2
    with aioresponses() as m:
        m.get(URL_RE, status=200, payload={"results": "private-value"}, repeat=True)
        with pytest.raises(HttpClientError) as info:
            await c.get_json(URL, validate=Page.model_validate)
    assert "results" in str(info.value) and "private-value" not in str(info.value)


async def test_runtime_starts_degraded_when_redis_is_down() -> None:
    """An unreachable Redis at start-up does not stop the runtime: the limiter starts degraded and
    limited requests still go out (at the local fallback rate)."""
    limits = {"down:api:": RateLimitSettings.model_validate({"interval_ms": 1000, "max_in_interval": 50})}
    rt = HttpRuntime(limits, "redis://127.0.0.1:1/0")
    await rt.start()
    try:
        assert rt.limiter.degraded
        c, counters = client(rt, "down:api:")
        with aioresponses() as m:
            m.get(URL_RE, status=200, payload=1, repeat=True)
            assert [await c.get_json(URL) for _ in range(3)] == [1, 1, 1]
        assert counters.api_calls == 3
    finally:
        await rt.close()
