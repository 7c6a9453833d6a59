"""``batcher health``: PostgreSQL, Redis and (when configured) MongoDB, each ok/down with the reason."""

from __future__ import annotations

import asyncio
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


async def _mongo(uri: str) -> dict[str, Any]:
    from batcher.sinks import mongo_health

    ok, reason = await mongo_health(uri, TIMEOUT)
    return {"ok": ok, "reason": reason}


async def check_health(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each backing service's status; embedded servers are reused, never started, by a health check."""
    report: dict[str, dict[str, Any]] = {}
    data_dir: Path = settings.daemon.data_dir
    try:
        async with embedded.services(settings.database.url, settings.redis.url, data_dir, start=False) as urls:
            report["postgres"] = await _postgres(urls.database_url)
            report["redis"] = await _redis(urls.redis_url)
    except BatcherError as exc:
        report.setdefault("postgres", {"ok": False, "reason": str(exc)})
        report.setdefault("redis", {"ok": False, "reason": str(exc)})
    if settings.mongo.uri:
        report["mongodb"] = await _mongo(settings.mongo.uri)
    return report
