"""The only way out to upstream APIs (DESIGN §8): one aiohttp session per process, per-namespace clients.

This module owns HTTP: :class:`HttpRuntime` (one per process: the ``ClientSession``, the Redis client
and the :class:`~batcher.ratelimit.RateLimiter`) hands out :class:`NamespaceClient` objects, which
implement :class:`batcher.handler.HttpClient` for one rate-limit namespace and one run. A request:

1. waits for its rate-limit admission (and any shared 429 pause: pushed to every process over Redis
   pub/sub, so an unlimited namespace needs no round trip per request) — :mod:`batcher.ratelimit`;
2. is sent with ``auto_decompress=False``; every attempt counts as an API call and the body bytes as
   received on the wire count as ingress (run accounting and Prometheus), then gzip/deflate is undone here;
3. 5xx, 408, timeouts and connection failures retry with exponential backoff and full jitter up to the
   namespace's ``max_attempts`` (GET/HEAD/OPTIONS/PUT/DELETE always; POST/PATCH only when marked
   ``idempotent``), then raise :class:`TransientError`; 429 (and GitHub's 403 with
   ``X-RateLimit-Remaining: 0``) pauses the namespace for every process (:func:`parse_retry_delay`) and
   retries, at most ``max_429_retries`` times in a row (:func:`~batcher.responses.is_rate_limited`: also
   Google's 403 ``quotaExceeded``/``rateLimitExceeded`` and a 403 with ``Retry-After``, GitHub's
   secondary limit; a ``quotaExceeded`` without a retry time pauses for the namespace's
   ``quota_pause_ms``); a 401 with an OAuth provider retries once after a
   forced refresh; any other 4xx raises :class:`HttpStatusError` (permanent) with a redacted excerpt.

Every wait — admission, pause, backoff, the request itself — watches the run's ``cancelled`` event and
raises :class:`RunCancelledError`. Responses are parsed from the raw bytes and validated with
:func:`validate_envelope` and :func:`validate_records` (:mod:`batcher.responses`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
from pydantic import ValidationError

from batcher import metrics
from batcher.connections import redis_client
from batcher.errors import PermanentError, RunCancelledError, TransientError
from batcher.handler import HttpClient
from batcher.logs import get_logger, register_credentials
from batcher.oauth import OAuth2Credentials, OAuth2TokenProvider, TokenProvider, safe_excerpt
from batcher.ratelimit import RateLimiter, effective_rate_limits, limit_for, wait_or_cancel
from batcher.responses import (
    HttpResponse,
    InvalidResponseError,
    decode_body,
    describe_validation_error,
    is_quota_exhausted,
    is_rate_limited,
    parse_retry_delay,
    safe_url,
    validate_envelope,
    validate_records,
)
from batcher.settings import RateLimitSettings

__all__ = ["HttpClientError", "HttpResponse", "HttpRuntime", "HttpStatusError", "InvalidResponseError",
           "NamespaceClient", "RunAccounting", "validate_envelope", "validate_records"]

T = TypeVar("T")
#: Sees each 429 response before the pause: raises to end the request, or returns the pause (seconds)
#: to use when the response names none.
ThrottleHook = Callable[[HttpResponse], float | None]
RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
DEFAULT_MAX_ATTEMPTS = 5
#: Failures worth another attempt: connection refused/reset, timeouts, truncated or corrupt bodies.
_RETRIED_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, EOFError,
                                                    InvalidResponseError)


class RunAccounting(Protocol):
    """The run counters the client adds to (the runner's implementation persists them)."""

    def add_api_call(self, n: int = 1) -> None: ...

    def add_ingress_bytes(self, n: int) -> None: ...


class HttpClientError(TransientError):
    """Retries exhausted (5xx, timeouts, connection failures, or too many 429s in a row)."""


class HttpStatusError(PermanentError):
    """A 4xx that retrying will not fix: the status and a short, redacted excerpt of the body."""

    def __init__(self, method: str, url: str, status: int, excerpt: str) -> None:
        super().__init__(f"{method} {url}: HTTP {status}: {excerpt}" if excerpt else
                         f"{method} {url}: HTTP {status}")
        self.status = status
        self.excerpt = excerpt


@dataclass
class _Attempts:
    """Counters of one logical request."""

    max_attempts: int
    retried: bool
    failures: int = 0
    throttled: int = 0
    reauthorized: bool = False


class NamespaceClient:
    """The HTTP client of one run for one rate-limit namespace (implements ``batcher.handler.HttpClient``)."""

    def __init__(self, runtime: HttpRuntime, namespace: str, *, accounting: RunAccounting,
                 cancelled: asyncio.Event, log: Any | None = None, oauth: TokenProvider | None = None,
                 ) -> None:
        self.namespace = namespace
        self._rt = runtime
        self._accounting = accounting
        self._cancelled = cancelled
        self._log = log if log is not None else get_logger("batcher.http")
        self._oauth = oauth
        self._label = metrics.namespace_label(namespace)
        match = limit_for(namespace, runtime.rate_limits)
        self.max_attempts = match[1].max_attempts if match else DEFAULT_MAX_ATTEMPTS
        self.quota_pause_s = match[1].quota_pause_ms / 1000 if match else 0.0

    async def get_json(self, url: str, *, params: Mapping[str, str] | None = None,
                       headers: Mapping[str, str] | None = None,
                       validate: Callable[[Any], Any] | None = None, raw_body: bool = False,
                       on_throttled: ThrottleHook | None = None) -> Any:
        """GET ``url`` and parse the JSON body.

        With ``validate``, the parsed body goes through it and its result is returned. A body that is not
        JSON, or a ``ValueError`` (pydantic's ``ValidationError`` is one) or :class:`InvalidResponseError`
        raised by ``validate``, is an invalid response: fetched again under the namespace's attempt budget
        and backoff, like a 5xx, then :class:`HttpClientError` naming what was wrong. With ``raw_body``,
        ``validate`` gets the (decompressed) body bytes instead and parses them itself (for handlers that
        scan the raw text, e.g. for escapes that cannot be stored).
        """
        if validate is None:
            return (await self.request("GET", url, params=params, headers=headers,
                                       on_throttled=on_throttled)).json()
        checked: list[Any] = []
        await self.request("GET", url, params=params, headers=headers, on_throttled=on_throttled,
                           accept=lambda response: checked.append(
                               validate(response.body if raw_body else response.json())))
        return checked[-1]

    async def request_json(self, method: str, url: str, *, idempotent: bool = False,
                           params: Mapping[str, str] | None = None, json: Any = None,
                           headers: Mapping[str, str] | None = None,
                           on_throttled: ThrottleHook | None = None) -> Any:
        """Send ``json`` (if any) and parse the JSON body of the answer."""
        response = await self.request(method, url, idempotent=idempotent, params=params, json=json,
                                      headers=headers, on_throttled=on_throttled)
        return response.json()

    async def request(self, method: str, url: str, *, idempotent: bool = False,
                      params: Mapping[str, str] | None = None, json: Any = None, data: Any = None,
                      headers: Mapping[str, str] | None = None,
                      accept: Callable[[HttpResponse], object] | None = None,
                      on_throttled: ThrottleHook | None = None,
                      free_not_modified: bool = False) -> HttpResponse:
        """One logical request: admission, attempts, 429 pauses, 401 refresh; a 2xx/3xx response.

        ``accept`` checks a 2xx/3xx response; when it raises ``ValueError``/``InvalidResponseError`` the
        attempt counts as failed (see :meth:`get_json`). ``on_throttled`` sees each 429 first: it may
        raise to end the request (a quota no pause will fix, e.g. a provider's daily limit), or return
        the pause in seconds to use when the response names none (None: the runtime's default). With
        ``free_not_modified`` a 304 answer gives its rate-limit admission back (conditional requests an
        upstream does not count, e.g. GitHub's authenticated ``If-None-Match``)."""
        method = method.upper()
        state = _Attempts(self.max_attempts, retried=idempotent or method in RETRIED_METHODS)
        while True:
            await self._rt.limiter.acquire(self.namespace, self._cancelled)
            sent_headers, token = await self._headers(headers)
            try:
                response = await self._until_cancelled(
                    self._send(method, url, params=params, json=json, data=data, headers=sent_headers))
            except aiohttp.InvalidURL:
                raise PermanentError(f"{method} {safe_url(url)}: invalid URL") from None
            except _RETRIED_ERRORS as exc:
                await self._failed(state, method, url, f"{type(exc).__name__}: {exc}")
                continue
            if await self._should_retry(state, method, url, response, token, on_throttled):
                continue
            if accept is not None and not await self._accepted(state, method, url, response, accept):
                continue
            if free_not_modified and response.status == 304:
                await self._rt.limiter.refund(self.namespace)
            return response

    async def _accepted(self, state: _Attempts, method: str, url: str, response: HttpResponse,
                        accept: Callable[[HttpResponse], object]) -> bool:
        """Run the caller's check of a response; an invalid one is a failed attempt (backoff or raise)."""
        try:
            accept(response)
        except ValidationError as exc:  # a ValueError: say where, never echo the (record) values
            await self._failed(state, method, url, f"invalid response: {describe_validation_error(exc)}")
            return False
        except (InvalidResponseError, ValueError) as exc:
            await self._failed(state, method, url, f"invalid response: {exc}")
            return False
        return True

    async def _headers(self, extra: Mapping[str, str] | None) -> tuple[dict[str, str], str | None]:
        sent = dict(extra or {})
        register_credentials(sent)
        if self._oauth is None:
            return sent, None
        token = await self._until_cancelled(self._oauth.token())
        sent["Authorization"] = f"Bearer {token}"
        return sent, token

    async def _send(self, method: str, url: str, **kwargs: Any) -> HttpResponse:
        self._accounting.add_api_call(1)
        metrics.HTTP_API_CALLS.labels(self._label).inc()
        async with self._rt.session.request(method, url, **kwargs) as resp:
            raw = await resp.read()
            self._accounting.add_ingress_bytes(len(raw))
            metrics.HTTP_INGRESS_BYTES.labels(self._label).inc(len(raw))
            body = decode_body(raw, resp.headers.get("Content-Encoding"))
            return HttpResponse(status=resp.status, headers=resp.headers, body=body, wire_bytes=len(raw))

    async def _should_retry(self, state: _Attempts, method: str, url: str, response: HttpResponse,
                            token: str | None, on_throttled: ThrottleHook | None = None) -> bool:
        """True to send again (after any pause or backoff); raises when the request has failed."""
        status = response.status
        if is_rate_limited(response):
            default_s = on_throttled(response) if on_throttled is not None else None
            await self._throttled(state, method, url, response, default_s)
            return True
        state.throttled = 0
        if status == 401 and self._oauth is not None and token is not None and not state.reauthorized:
            state.reauthorized = True
            self._log.info("http_unauthorized_refreshing", namespace=self.namespace, url=safe_url(url))
            await self._until_cancelled(self._oauth.refresh(token))
            return True
        if status >= 500 or status == 408:
            await self._failed(state, method, url, f"HTTP {status}")
            return True
        if status >= 400:
            raise HttpStatusError(method, safe_url(url), status, safe_excerpt(response.body))
        return False

    async def _throttled(self, state: _Attempts, method: str, url: str, response: HttpResponse,
                         default_s: float | None = None) -> None:
        state.throttled += 1
        metrics.HTTP_RATE_LIMITED.labels(self._label).inc()
        if default_s is None:  # the request's hook gave none
            default_s = self._rt.default_retry_after_s
            if self.quota_pause_s and is_quota_exhausted(response):
                default_s = self.quota_pause_s
        delay, problems = parse_retry_delay(response.headers, self._rt.clock(), default_s=default_s,
                                            max_s=self._rt.max_pause_s)
        for problem in problems:
            self._log.warning("retry_after_unparseable", namespace=self.namespace, header=problem,
                              default_s=default_s)
        if state.throttled > self._rt.max_429_retries:
            raise HttpClientError(f"{method} {safe_url(url)}: still rate limited (HTTP {response.status}) "
                                  f"after {self._rt.max_429_retries} retries")
        self._log.warning("http_rate_limited", namespace=self.namespace, url=safe_url(url),
                          status=response.status, pause_s=round(delay, 3), retry=state.throttled)
        await self._rt.limiter.pause(self.namespace, delay)

    async def _failed(self, state: _Attempts, method: str, url: str, reason: str) -> None:
        """Count a failed attempt; back off (full jitter) or raise when no attempt is left."""
        state.failures += 1
        reason = safe_excerpt(reason, 160)
        if not state.retried:
            raise HttpClientError(f"{method} {safe_url(url)}: {reason} (not retried: {method} "
                                  f"is not marked idempotent)")
        if state.failures >= state.max_attempts:
            raise HttpClientError(f"{method} {safe_url(url)}: {reason} (after {state.failures} attempts)")
        ceiling = min(self._rt.backoff_max_s, self._rt.backoff_base_s * 2 ** (state.failures - 1))
        delay = random.uniform(0, ceiling)
        metrics.HTTP_RETRIES.labels(self._label).inc()
        self._log.warning("http_retry", namespace=self.namespace, method=method, url=safe_url(url),
                          reason=reason, attempt=state.failures, max_attempts=state.max_attempts,
                          backoff_s=round(delay, 3))
        await wait_or_cancel(delay, self._cancelled)

    async def _until_cancelled(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work``, abandoning it with RunCancelledError as soon as the run is cancelled."""
        if self._cancelled.is_set():
            work.close()
            raise RunCancelledError("cancelled")
        task = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(self._cancelled.wait())
        try:
            await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            raise RunCancelledError("cancelled")
        return task.result()


class HttpRuntime:
    """The process's HTTP machinery: one ``ClientSession``, the Redis client and the rate limiter."""

    def __init__(self, rate_limits: Mapping[str, RateLimitSettings], redis_url: str | None,
                 live_workers: Callable[[], Awaitable[int]] | None = None, *,
                 request_timeout_s: float = 60.0, connect_timeout_s: float = 10.0,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0, max_429_retries: int = 10,
                 default_retry_after_s: float = 1.0, max_pause_s: float = 3600.0,
                 probe_interval_s: float = 3.0, user_agent: str = "batcher",
                 clock: Callable[[], float] | None = None,
                 default_rate_limits: Mapping[str, RateLimitSettings] | None = None) -> None:
        """``rate_limits`` are the TOML entries: they override ``default_rate_limits``, the handlers'
        (:func:`batcher.registry.handler_rate_limits`)."""
        self.rate_limits = effective_rate_limits(default_rate_limits or {}, rate_limits)
        self.redis_url = redis_url
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_429_retries = max_429_retries
        self.default_retry_after_s = default_retry_after_s
        self.max_pause_s = max_pause_s
        self.clock = clock or time.time
        self._live_workers = live_workers
        self._probe_interval_s = probe_interval_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, connect=connect_timeout_s)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._redis: Any = None
        self._limiter: RateLimiter | None = None
        self._providers: dict[str, OAuth2TokenProvider] = {}

    async def start(self) -> None:
        """Create the session and the Redis client, load the limiter script (Redis down: degraded)."""
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, auto_decompress=False,
            headers={"User-Agent": self._user_agent, "Accept-Encoding": "gzip, deflate"})
        # aiohttp silently resends an idempotent request once when a kept-alive connection drops; we do
        # our own retries, and every attempt must be counted (no public switch in aiohttp 3.11).
        self._session._retry_connection = False
        self._redis = redis_client(self.redis_url) if self.redis_url else None
        self._limiter = RateLimiter(self.rate_limits, self._redis, live_workers=self._live_workers,
                                    probe_interval_s=self._probe_interval_s)
        await self._limiter.load()
        self._limiter.start_pause_feed()

    async def close(self) -> None:
        if self._limiter is not None:
            await self._limiter.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("HttpRuntime.start() was not called")
        return self._session

    @property
    def limiter(self) -> RateLimiter:
        if self._limiter is None:
            raise RuntimeError("HttpRuntime.start() was not called")
        return self._limiter

    def client(self, namespace: str, *, accounting: RunAccounting, cancelled: asyncio.Event,
               log: Any | None = None, oauth: TokenProvider | None = None) -> NamespaceClient:
        """A client bound to ``namespace`` for one run (cheap: make one per run and namespace)."""
        return NamespaceClient(self, namespace, accounting=accounting, cancelled=cancelled, log=log,
                               oauth=oauth)

    def token_provider(self, credentials: OAuth2Credentials, *,
                       refresh_early_s: float = 60.0) -> OAuth2TokenProvider:
        """The one provider of ``credentials`` in this process (single-flight per credential)."""
        key = credentials.key()
        if key not in self._providers:
            self._providers[key] = OAuth2TokenProvider(credentials, self, refresh_early_s=refresh_early_s)
        return self._providers[key]

    async def post_form(self, url: str, form: Mapping[str, str], headers: Mapping[str, str],
                        ) -> tuple[int, bytes]:
        """POST a form (token requests: not rate limited, not run-accounted, one attempt)."""
        try:
            async with self.session.post(url, data=dict(form), headers=dict(headers)) as resp:
                raw = await resp.read()
                return resp.status, decode_body(raw, resp.headers.get("Content-Encoding"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HttpClientError(f"POST {safe_url(url)}: {type(exc).__name__}") from None


def _satisfies_handler_protocol(client: NamespaceClient) -> HttpClient:
    """Type check only: NamespaceClient implements the handler-facing HttpClient protocol."""
    return client
