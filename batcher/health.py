"""``batcher health``: PostgreSQL, Redis and (when configured) MongoDB, each ok/down with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from batcher import embedded, store
from batcher.errors import BatcherError
from batcher.settings import Settings

TIMEOUT = 3.0


async def _postgres(url: str) -> dict[str, Any]:
    try:
        conn = await asyncio.wait_for(store.connect(url, timeout=TIMEOUT), TIMEOUT)
        try:
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
    except store.DB_OR_CONNECT_ERRORS as exc:
        return {"ok": False, "reason": str(exc)}
    return {"ok": True, "reason": f"PostgreSQL {version}"}


async def _redis(url: str) -> dict[str, Any]:
    from batcher.connections import redis_health

    ok, reason = await redis_health(url, TIMEOUT)
    return {"ok": ok, "reason": reason}


async def _mongo(uri: str, params: str | None) -> dict[str, Any]:
    from batcher.sinks.mongo import mongo_health

    ok, reason = await mongo_health(uri, TIMEOUT, params)
    return {"ok": ok, "reason": reason}


async def check_health(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each backing service's status; embedded servers are reused, never started, by a health check.
    Each service is resolved on its own, so a missing embedded PostgreSQL does not mask Redis's status."""
    data_dir: Path = settings.daemon.data_dir
    return {
        "postgres": await _resolved(settings.database.url, data_dir, "postgres", _postgres),
        "redis": await _resolved(settings.redis.url, data_dir, "redis", _redis),
        **({"mongodb": await _mongo(settings.mongo.uri, settings.mongo.params)} if settings.mongo.uri else {}),
    }


async def _resolved(url: str | None, data_dir: Path, which: str,
                    check: Callable[[str], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    placeholder = "unused://"  # the other service is not looked up
    try:
        async with embedded.services(url if which == "postgres" else placeholder,
                                     url if which == "redis" else placeholder, data_dir, start=False) as urls:
            return await check(urls.database_url if which == "postgres" else urls.redis_url)
    except BatcherError as exc:
        return {"ok": False, "reason": str(exc)}
