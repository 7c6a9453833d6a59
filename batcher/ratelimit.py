"""Rate limits shared by every process (DESIGN §8): one GCRA Lua script in Redis, a local fallback.

This module owns *when* a request may leave, per rate-limit namespace:

- The limits: each handler's ``default_rate_limits`` (collected by the registry,
  :func:`batcher.registry.handler_rate_limits`: this module names no provider), overridden by the TOML's
  ``[rate_limits."ns:"]`` entries (:func:`effective_rate_limits`). A namespace is matched to its settings
  by the longest configured prefix, so ``"crm:api:account-42"`` (a namespace with a credential
  discriminator) uses the ``"crm:api:"`` settings but has its own Redis state, since upstream limits are
  per key. A namespace that matches nothing is unlimited: never paced, but a 429 seen by any process
  holds every process (the shared pause below).
- Admission is a reservation: the script hands out the next slot (``max(tat - tolerance, now)``) when it
  lies at most one emission interval ahead (the horizon, 20 ms–1 s) and the caller sleeps until it; a
  later caller is told when to ask again. Since the slot, not the (slightly late) moment of asking,
  advances the state, sleep overshoot and round trips cost no allowance; a 429 pause can let through
  at most the requests already holding a slot (one horizon's worth).
- The GCRA: emission interval ``T = max(interval_ms / max_in_interval, min_spacing_ms)`` and tolerance
  ``(burst - 1) * T``. With ``burst = 1`` admissions are at least ``T`` apart, so no half-open window of
  ``interval_ms`` ever holds more than ``max_in_interval`` of them. The state lives in
  ``batcher:rl:{ns}:tat`` (theoretical arrival time, µs) and the script reads the clock with Redis
  ``TIME``, so every process shares one clock. ``{ns}`` is literal: it is also a Redis Cluster hash tag.
- The shared pause: ``batcher:rl:{ns}:paused_until`` (ms epoch, Redis clock), set by a 429 through the
  same script and only ever extended; while it lies ahead nothing in that namespace is admitted. The
  script also publishes each extension (:class:`batcher.pausefeed.PauseFeed`): a process subscribed to
  the feed admits an unlimited namespace from its local copy of the pauses instead of a Redis round trip
  per request, checking Redis only once per namespace after (re)subscribing and then every second;
  without a live subscription every admission checks Redis as before.
- Redis unreachable: an in-process GCRA at ``1 / live_workers()`` of the allowance takes over, logs
  ``rate_limiter_degraded`` once, probes Redis at most every ``probe_interval_s`` and logs
  ``rate_limiter_recovered`` when it answers again.

Every wait watches the run's ``cancelled`` event and raises :class:`RunCancelledError` promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisError

from batcher import metrics
from batcher.errors import RunCancelledError
from batcher.logs import get_logger
from batcher.pausefeed import PauseFeed, pause_channel
from batcher.settings import RateLimitSettings

if TYPE_CHECKING:
    import redis.asyncio

#: KEYS: tat, paused_until.
#: ARGV acquire: "acquire", T µs, tolerance µs, horizon µs[, floor µs] → {1, wait µs, slot µs} when a slot
#: at most ``horizon`` ahead was reserved, else {0, µs to wait before asking again, now µs}. The optional
#: floor (burst 1 only) keeps the slot at least that far from now: after local admissions (Redis was down),
#: the first shared one stays one emission interval after the last local one, and so do those after it.
#: ARGV pause: "pause", delay ms[, channel, namespace] → {extended, paused_until ms, now µs}; a pause that
#: was extended is published on ``channel`` (when given) as the JSON ``[namespace, paused_until ms, now ms]``.
#: ARGV refund: "refund", T µs → {1, new tat µs, now µs}: one admission given back (a free 304).
GCRA_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[1] == 'pause' then
  local delay = tonumber(ARGV[2])
  local target = now_ms + delay
  if target > paused then
    redis.call('SET', KEYS[2], string.format('%.0f', target), 'PX', math.floor(delay) + 60000)
    if ARGV[3] and ARGV[3] ~= '' then
      redis.call('PUBLISH', ARGV[3], cjson.encode({ARGV[4], target, now_ms}))
    end
    return {1, target, now}
  end
  return {0, paused, now}
end
if ARGV[1] == 'refund' then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0') - tonumber(ARGV[2])
  if tat > now then
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  else
    redis.call('DEL', KEYS[1])
  end
  return {1, tat, now}
end
if paused > now_ms then
  return {0, (paused - now_ms) * 1000, now}
end
if ARGV[1] == 'check' then
  return {1, 0, now}
end
local emission = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local floor = now + tonumber(ARGV[5] or '0')
if tat < floor then tat = floor end
local slot = tat - tolerance
if slot < now then slot = now end
if slot - now > horizon then
  return {0, slot - now - horizon, now}
end
local new_tat = tat + emission
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {1, slot - now, slot}
"""

LiveWorkers = Callable[[], Awaitable[int]]


def effective_rate_limits(defaults: Mapping[str, RateLimitSettings],
                          configured: Mapping[str, RateLimitSettings]) -> dict[str, RateLimitSettings]:
    """The handlers' defaults overlaid with the configured entries (a configured key wins whole)."""
    return {**defaults, **configured}


def limit_for(namespace: str, limits: Mapping[str, RateLimitSettings],
              ) -> tuple[str, RateLimitSettings] | None:
    """The ``(key, settings)`` whose key is the longest prefix of ``namespace``, or None (unlimited)."""
    best = max((k for k in limits if namespace.startswith(k)), key=len, default=None)
    return None if best is None else (best, limits[best])


@dataclass(frozen=True)
class Gcra:
    """GCRA parameters in microseconds."""

    emission_us: int
    tolerance_us: int

    @property
    def horizon_us(self) -> int:
        """How far ahead a slot may be reserved: one emission interval, within 20 ms–1 s."""
        return min(max(self.emission_us, 20_000), 1_000_000)

    @classmethod
    def from_settings(cls, s: RateLimitSettings, share: int = 1) -> Gcra:
        """Parameters for ``1/share`` of the allowance (``share`` > 1 in degraded mode)."""
        per_slot = -(-s.interval_ms * 1000 // s.max_in_interval)  # rounded up: never one too many
        emission = max(per_slot, s.min_spacing_ms * 1000) * max(1, share)
        return cls(emission_us=emission, tolerance_us=(s.burst - 1) * emission)


@dataclass(frozen=True)
class Admission:
    """One admitted request: when (µs epoch; Redis clock when ``shared``) and how long it waited."""

    at_us: int
    waited_s: float
    shared: bool


class LocalGcra:
    """The in-process GCRA and pauses (monotonic clock), used for unlimited namespaces' pauses and
    whenever Redis is unreachable."""

    def __init__(self) -> None:
        self._tat: dict[str, int] = {}
        self._paused: dict[str, int] = {}
        self._last: dict[str, tuple[int, bool]] = {}  # this process's latest admission: (slot, shared)

    def floor_us(self, namespace: str, gcra: Gcra) -> int:
        """How long a Redis admission must wait at least (burst 1): one emission interval after this
        process's previous admission when that one was local — a restarted Redis knows none of those."""
        last, shared = self._last.get(namespace, (0, True))
        if shared or gcra.tolerance_us:
            return 0
        return max(0, last + gcra.emission_us - self.now_us())

    def admitted_shared(self, namespace: str, wait_us: int) -> None:
        self._last[namespace] = (self.now_us() + wait_us, True)

    @staticmethod
    def now_us() -> int:
        return time.monotonic_ns() // 1000

    def try_acquire(self, namespace: str, gcra: Gcra | None) -> tuple[bool, int]:
        """``(True, µs until the reserved slot)`` or ``(False, µs to wait before asking again)``."""
        now = self.now_us()
        paused = self._paused.get(namespace, 0)
        if paused > now:
            return False, paused - now
        if gcra is None:
            return True, 0
        tat = max(self._tat.get(namespace, 0), now)
        if gcra.tolerance_us == 0:  # after Redis admissions (which this GCRA never saw), keep their spacing
            tat = max(tat, self._last.get(namespace, (0, False))[0] + gcra.emission_us)
        slot = max(tat - gcra.tolerance_us, now)
        if slot - now > gcra.horizon_us:
            return False, slot - now - gcra.horizon_us
        self._tat[namespace] = tat + gcra.emission_us
        self._last[namespace] = (slot, False)
        return True, slot - now

    def refund(self, namespace: str, gcra: Gcra) -> None:
        if namespace in self._tat:
            self._tat[namespace] -= gcra.emission_us

    def pause(self, namespace: str, delay_s: float) -> None:
        target = self.now_us() + int(delay_s * 1_000_000)
        self._paused[namespace] = max(self._paused.get(namespace, 0), target)


async def wait_or_cancel(delay_s: float, cancelled: asyncio.Event) -> None:
    """Sleep ``delay_s`` seconds, or raise :class:`RunCancelledError` as soon as ``cancelled`` is set."""
    if cancelled.is_set():
        raise RunCancelledError("cancelled")
    if delay_s <= 0:
        return
    try:
        await asyncio.wait_for(cancelled.wait(), timeout=delay_s)
    except TimeoutError:
        return
    raise RunCancelledError("cancelled")


async def _lock_or_cancel(lock: asyncio.Lock, cancelled: asyncio.Event) -> None:
    """Acquire ``lock``, or raise :class:`RunCancelledError` (not holding it) once ``cancelled`` is set."""
    if cancelled.is_set():
        raise RunCancelledError("cancelled")
    acquiring = asyncio.ensure_future(lock.acquire())
    waiter = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait((acquiring, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not acquiring.done():
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquiring
    acquired = not acquiring.cancelled() and acquiring.exception() is None
    if acquired and not cancelled.is_set():
        return
    if acquired:
        lock.release()
    raise RunCancelledError("cancelled")


def _keys(namespace: str) -> tuple[str, str]:
    return f"batcher:rl:{{{namespace}}}:tat", f"batcher:rl:{{{namespace}}}:paused_until"


class RateLimiter:
    """Admits requests per namespace: the shared Redis GCRA, or the local fallback while Redis is down.

    ``redis`` may be None (no Redis configured): every limited namespace then uses the local GCRA at
    ``1 / live_workers()`` of its allowance, as in degraded mode, without the degraded log line.
    """

    def __init__(self, limits: Mapping[str, RateLimitSettings], redis: redis.asyncio.Redis[bytes] | None, *,
                 live_workers: LiveWorkers | None = None, probe_interval_s: float = 3.0,
                 max_sleep_s: float = 5.0, log: Any | None = None) -> None:
        self.limits = dict(limits)
        self._redis: Any = redis  # redis-py's async commands are untyped
        self._live_workers = live_workers
        self._probe_interval_s = probe_interval_s
        self._max_sleep_s = max_sleep_s
        self._log = log if log is not None else get_logger("batcher.ratelimit")
        self._local = LocalGcra()
        self._sha: str | None = None
        self._degraded = False
        self._next_probe = 0.0
        self._share = 1
        self._gates: dict[str, asyncio.Lock] = {}
        self._channel = pause_channel(redis) if redis is not None else None
        self._feed: PauseFeed | None = None

    @property
    def degraded(self) -> bool:
        """True while Redis is configured but unreachable (the local fallback limits)."""
        return self._degraded

    async def load(self) -> None:
        """Load the script (``SCRIPT LOAD``); an unreachable Redis only starts us degraded."""
        if self._redis is None:
            self._share = await self._count_workers()
            return
        try:
            self._sha = await self._redis.script_load(GCRA_SCRIPT)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._degrade(exc)

    def start_pause_feed(self, **options: float) -> None:
        """Subscribe to the pauses every process publishes (:class:`PauseFeed`); stopped by :meth:`close`.
        Without it (and while it is not live) every admission of an unlimited namespace asks Redis."""
        if self._redis is not None and self._channel is not None and self._feed is None:
            self._feed = PauseFeed(self._redis, self._channel, self._local, log=self._log, **options)
            self._feed.start()

    async def close(self) -> None:
        """Stop the pause feed (the Redis client belongs to the caller)."""
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.close()

    async def acquire(self, namespace: str, cancelled: asyncio.Event) -> Admission:
        """Wait until ``namespace`` may send one request; the returned admission says when.

        Within a process one task per namespace at a time asks for a slot (the others queue on a
        lock), so Redis sees one contender per process instead of a thundering herd of tasks.
        """
        started = time.monotonic()
        match = limit_for(namespace, self.limits)
        gate = self._gates.setdefault(namespace, asyncio.Lock()) if match is not None else None
        if gate is not None:
            await _lock_or_cancel(gate, cancelled)
        try:
            while True:
                if cancelled.is_set():
                    raise RunCancelledError("cancelled")
                admitted, wait_us, at_us, shared = await self._attempt(namespace, match)
                if admitted:
                    break
                await wait_or_cancel(min(wait_us / 1e6, self._max_sleep_s), cancelled)
        finally:
            if gate is not None:
                gate.release()
        await wait_or_cancel(wait_us / 1e6, cancelled)
        waited = time.monotonic() - started
        if match is not None:
            metrics.RATELIMIT_WAIT.labels(metrics.namespace_label(namespace)).observe(waited)
        return Admission(at_us=at_us, waited_s=waited, shared=shared)

    async def pause(self, namespace: str, delay_s: float) -> None:
        """Hold every process's requests in ``namespace`` for ``delay_s`` s (only ever extends)."""
        self._local.pause(namespace, delay_s)
        if self._redis is None or not self._redis_due():
            return
        try:
            await self._eval(namespace, "pause", int(delay_s * 1000), self._channel or "", namespace)
            self._recovered()
        except (RedisError, OSError, TimeoutError) as exc:
            await self._degrade(exc)

    async def refund(self, namespace: str) -> None:
        """Give one admission of ``namespace`` back (a request the upstream did not count)."""
        match = limit_for(namespace, self.limits)
        if match is None:
            return
        gcra = Gcra.from_settings(match[1])
        if self._redis is not None and self._redis_due():
            try:
                await self._eval(namespace, "refund", gcra.emission_us)
                return
            except (RedisError, OSError, TimeoutError) as exc:
                await self._degrade(exc)
        self._local.refund(namespace, Gcra.from_settings(match[1], self._share))

    async def _attempt(self, namespace: str, match: tuple[str, RateLimitSettings] | None,
                       ) -> tuple[bool, int, int, bool]:
        """``(admitted, wait µs, slot µs epoch, shared)`` from Redis or the local fallback.

        An unlimited namespace the pause feed covers is admitted from the local pauses, which the feed
        keeps up to date with every process's (no round trip; the slot is on the local clock).
        """
        feed = self._feed
        if match is None and feed is not None and feed.covers(namespace):
            admitted, wait = self._local.try_acquire(namespace, None)
            return admitted, wait, time.time_ns() // 1000 + wait, True
        if self._redis is not None and self._redis_due():
            try:
                if match is None:  # unlimited: no pacing, but a 429 pause from any process still holds it
                    generation, started = (feed.generation(), time.monotonic()) if feed else (0, 0.0)
                    ok, value, now = await self._eval(namespace, "check")
                    if feed is not None:
                        if not ok:  # paused: the feed's admissions wait for it too
                            self._local.pause(namespace, value / 1e6)
                        feed.checked(namespace, generation, started)
                else:
                    gcra = Gcra.from_settings(match[1])
                    ok, value, now = await self._eval(namespace, "acquire", gcra.emission_us, gcra.tolerance_us,
                                                      gcra.horizon_us, self._local.floor_us(namespace, gcra))
                    if ok:
                        self._local.admitted_shared(namespace, int(value))
            except (RedisError, OSError, TimeoutError) as exc:
                await self._degrade(exc)
            else:
                self._recovered()
                return bool(ok), int(value), int(now), True
        local = None if match is None else Gcra.from_settings(match[1], self._share)
        admitted, wait = self._local.try_acquire(namespace, local)
        return admitted, wait, time.time_ns() // 1000 + wait, False

    def _redis_due(self) -> bool:
        """Use Redis unless degraded; while degraded, let one caller probe every probe interval."""
        if not self._degraded:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self._probe_interval_s
        return True

    async def _eval(self, namespace: str, *args: Any) -> list[int]:
        assert self._redis is not None
        keys = _keys(namespace)
        if self._sha is None:
            self._sha = await self._redis.script_load(GCRA_SCRIPT)
        try:
            result = await self._redis.evalsha(self._sha, 2, *keys, *args)
        except NoScriptError:
            self._sha = await self._redis.script_load(GCRA_SCRIPT)
            result = await self._redis.evalsha(self._sha, 2, *keys, *args)
        return [int(v) for v in result]

    async def _degrade(self, exc: BaseException) -> None:
        self._next_probe = time.monotonic() + self._probe_interval_s
        self._share = await self._count_workers()
        if not self._degraded:
            self._degraded = True
            metrics.RATELIMIT_DEGRADED.set(1)
            self._log.warning("rate_limiter_degraded", error=f"{type(exc).__name__}: {exc}"[:200],
                              share=self._share, probe_interval_s=self._probe_interval_s)

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            metrics.RATELIMIT_DEGRADED.set(0)
            self._log.info("rate_limiter_recovered")

    async def _count_workers(self) -> int:
        if self._live_workers is None:
            return 1
        try:
            return max(1, int(await self._live_workers()))
        except Exception as exc:  # noqa: BLE001 - any failure keeps the previous share
            self._log.warning("live_workers_unknown", error=f"{type(exc).__name__}: {exc}"[:200])
            return max(1, self._share)
