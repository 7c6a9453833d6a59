"""The 429 pauses of every process, pushed to every process over Redis pub/sub (:class:`PauseFeed`).

:mod:`batcher.ratelimit`'s pause script publishes each pause it extends on :func:`pause_channel`; a
process subscribed here keeps a local copy of every namespace's pause, so :class:`batcher.ratelimit.
RateLimiter` can admit an unlimited namespace without a Redis round trip per request. Imports redis-py
only for its exception types (the client is :mod:`batcher.connections`').
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, Protocol

from redis.exceptions import RedisError

from batcher.shutdown import cancel_and_wait

#: How long :meth:`PauseFeed.close` waits for its task (cancelled, and again if it lost the cancel).
CLOSE_TIMEOUT = 5.0


class LocalPauses(Protocol):
    """Where the feed applies the pauses it hears (:class:`batcher.ratelimit.LocalGcra`)."""

    def pause(self, namespace: str, delay_s: float) -> None: ...


class PauseFeed:
    """The 429 pauses of every process, pushed over Redis pub/sub into this process's :class:`LocalGcra`.

    The pause script publishes each pause it extends on :func:`pause_channel` (one channel per Redis db:
    pub/sub ignores db numbers). While the subscription is confirmed live, an unlimited namespace that
    was checked in Redis since then (and within ``recheck_s``) is admitted from the local pauses alone,
    without a round trip per request; the first request of a namespace after (re)subscribing, and one
    every ``recheck_s`` (a pause set by a process of an older version, which does not publish), still
    run the Redis check. A subscription that fails, or answers no keep-alive ``PING`` within
    ``2 × keepalive_s``, is dropped — every check goes to Redis again — and re-established.
    """

    def __init__(self, redis: Any, channel: str, local: LocalPauses, *, log: Any, recheck_s: float = 1.0,
                 keepalive_s: float = 1.0, retry_s: float = 1.0) -> None:
        self._redis = redis
        self.channel = channel
        self._local = local
        self._log = log
        self._recheck_s = recheck_s
        self._keepalive_s = keepalive_s
        self._retry_s = retry_s
        self._generation = 0  # odd while the subscription is live; bumped when it goes live or dies
        self._checked: dict[str, tuple[int, float]] = {}  # namespace -> (generation, monotonic) of its check
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self._generation % 2 == 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher-pause-feed")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task, CLOSE_TIMEOUT)
        self._set_live(False)

    def covers(self, namespace: str) -> bool:
        """True when the local pauses of ``namespace`` are all that an admission needs to consult."""
        checked = self._checked.get(namespace)
        return (self.live and checked is not None and checked[0] == self._generation
                and time.monotonic() - checked[1] < self._recheck_s)

    def generation(self) -> int:
        return self._generation

    def checked(self, namespace: str, generation: int, started: float) -> None:
        """A Redis check of ``namespace`` that started at ``started`` (monotonic) in ``generation`` answered."""
        if generation == self._generation and self.live:
            self._checked[namespace] = (generation, started)

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self._generation += 1
            self._checked.clear()

    def receive(self, data: bytes) -> None:
        """Apply one published pause ``[namespace, paused_until ms, now ms]`` (both on the Redis clock)."""
        try:
            namespace, until_ms, now_ms = json.loads(data)
            delay_s = (float(until_ms) - float(now_ms)) / 1000
        except (ValueError, TypeError):
            self._log.warning("pause_feed_message_unreadable", channel=self.channel)
            return
        if isinstance(namespace, str) and delay_s > 0:
            self._local.pause(namespace, delay_s)

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._listen(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                if self.live:
                    self._log.warning("pause_feed_lost", error=f"{type(exc).__name__}: {exc}"[:200])
            finally:
                self._set_live(False)
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()
            await asyncio.sleep(self._retry_s)

    async def _listen(self, pubsub: Any) -> None:
        await pubsub.subscribe(self.channel)
        heard = pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=self._keepalive_s)
            now = time.monotonic()
            if message is not None:
                heard = now
                kind = message.get("type")
                if kind == "subscribe":
                    self._set_live(True)
                elif kind == "message":
                    self.receive(message["data"])
            if now - heard > 2 * self._keepalive_s:
                raise TimeoutError(f"no answer on the pause feed for {now - heard:.1f} s")
            if now - pinged >= self._keepalive_s:
                pinged = now
                await pubsub.ping()


def pause_channel(redis: Any) -> str:
    """The pub/sub channel of the pauses of the client's Redis db."""
    db = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {}).get("db", 0)
    return f"batcher:rl:pauses:db{db}"
