"""A batcher-like process for test_embedded.py: uses a data dir's embedded servers until SIGTERM.

Usage: ``python embedded_user.py DATA_DIR start|reuse``

Prints one JSON line ``{"database_url", "redis_url", "identity"}`` once both servers answer (identity:
PostgreSQL's postmaster start time and Redis' process id, as the servers report them). On SIGTERM it asks both
servers again — what a daemon's final commits need — prints ``{"identity_at_cleanup": …}`` (null when one
no longer answers), then leaves ``services()`` (the last user stops the servers) and exits 0.
A start that fails prints ``{"error": …}`` and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import redis
import redis.asyncio as aredis
import structlog

from batcher import embedded
from batcher.errors import ServiceUnavailableError


async def identify(urls: embedded.ServiceUrls) -> dict[str, Any] | None:
    """Who answers: PostgreSQL's start time and Redis' process id; None when either does not answer."""
    try:
        conn = await asyncpg.connect(urls.database_url, timeout=5)
        try:
            postmaster = await conn.fetchval("SELECT pg_postmaster_start_time()::text")
        finally:
            await conn.close()
        client = aredis.from_url(urls.redis_url, socket_timeout=5)
        try:
            info = await client.info("server")
        finally:
            await client.aclose()
    except (OSError, asyncpg.PostgresError, redis.RedisError, TimeoutError):
        return None
    return {"postgres_started": postmaster, "redis_pid": info["process_id"]}


async def main(data_dir: Path, start: bool) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with embedded.services(None, None, data_dir, start=start) as urls:
            print(json.dumps({"database_url": urls.database_url, "redis_url": urls.redis_url,
                              "identity": await identify(urls)}), flush=True)
            await stop.wait()
            print(json.dumps({"identity_at_cleanup": await identify(urls)}), flush=True)
    except ServiceUnavailableError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    sys.exit(asyncio.run(main(Path(sys.argv[1]), sys.argv[2] == "start")))
