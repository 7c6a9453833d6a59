"""Redis connection pools and the Redis health probe (DESIGN §2: redis-py is owned here and by ratelimit).

- :func:`redis_client` builds a ``redis.asyncio.Redis`` (one connection pool each) with short socket
  timeouts, so a dead server fails fast instead of stalling a rate-limit wait. The caller owns it and
  closes it with ``await client.aclose()``.
- :func:`redis_health` answers "can we talk to this Redis?" for ``batcher health`` and readiness checks:
  ``(True, "ok")`` or ``(False, reason)`` within ``timeout`` seconds, never raising and never putting the
  URL's password in the reason.
"""

from __future__ import annotations

import asyncio

import redis.asyncio
from redis.exceptions import RedisError

from batcher.logs import redact

#: Seconds a single Redis command may take before it counts as a failure (the limiter then degrades).
DEFAULT_SOCKET_TIMEOUT = 2.0


def redis_client(url: str, *, socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
                 max_connections: int = 50) -> redis.asyncio.Redis[bytes]:
    """A new client with its own pool for ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    Commands are not retried by redis-py: the callers decide (the rate limiter falls back to its
    in-process limit). The pool reconnects by itself once the server is back.
    """
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        max_connections=max_connections,
        health_check_interval=30,
        retry_on_timeout=False,
    )


async def redis_health(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """``(True, "ok")`` when ``PING`` answers within ``timeout`` seconds, else ``(False, reason)``."""
    client = redis_client(url, socket_timeout=timeout, max_connections=1)
    try:
        async with asyncio.timeout(timeout):
            pong = await client.ping()
        return (True, "ok") if pong else (False, "PING was not answered with PONG")
    except TimeoutError:
        return False, f"no answer within {timeout:g} s"
    except (RedisError, OSError) as exc:
        return False, redact(f"{type(exc).__name__}: {exc}")[:300]
    finally:
        await client.aclose()  # type: ignore[attr-defined]  # types-redis 4.6 predates aclose
