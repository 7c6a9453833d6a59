"""What every benchmark needs: a throw-away migrated PostgreSQL database and a Redis db of its own.

Benchmarks never touch data they did not create: the database is created and dropped here (on
``BENCH_DATABASE_URL``, default the local server's ``postgres``), and the Redis db number (1–9 on
``BENCH_REDIS_URL``) is claimed with the tests' lock scheme — ``SET lock token NX PX``, flushed keeping the
lock, renewed from a thread, released (flushed again) at the end; never FLUSHALL, never another db.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from batcher import store

BASE_DB = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BASE_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
LOCK_KEY = "batcher:test-session-lock"
LOCK_MS = 60_000
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RedisDbLock:
    """A free Redis db among 1–9, claimed with ``SET lock token NX PX`` and renewed until released."""

    def __init__(self, base: str = BASE_REDIS) -> None:
        self.base, self.token = base.rstrip("/"), uuid.uuid4().hex
        self.client: redis.Redis | None = None
        self._stop = threading.Event()

    def acquire(self) -> str:
        """The URL of the claimed db, emptied (the lock kept)."""
        for number in range(1, 10):
            client = redis.Redis.from_url(self.base, db=number, socket_timeout=5)
            if client.set(LOCK_KEY, self.token, nx=True, px=LOCK_MS):
                self.client = client
                self.flush()
                threading.Thread(target=self._renew, daemon=True).start()
                return f"{self.base}/{number}"
            client.close()
        raise SystemExit("no free Redis db among 1–9")

    def flush(self) -> None:
        assert self.client is not None
        pipe = self.client.pipeline(transaction=True)
        pipe.flushdb()
        pipe.set(LOCK_KEY, self.token, px=LOCK_MS)
        pipe.execute()

    def _renew(self) -> None:
        while not self._stop.wait(LOCK_MS / 3000):
            with contextlib.suppress(redis.RedisError):
                assert self.client is not None
                self.client.eval(_RENEW, 1, LOCK_KEY, self.token, LOCK_MS)

    def release(self, *, flush: bool = False) -> None:
        self._stop.set()
        if self.client is not None:
            if flush and self.client.get(LOCK_KEY) == self.token.encode():
                self.flush()
            self.client.eval(_RELEASE, 1, LOCK_KEY, self.token)
            self.client.close()


@contextlib.contextmanager
def claimed_redis_db(base: str = BASE_REDIS) -> Iterator[str]:
    """A Redis db of our own for the duration of the block, flushed before and after."""
    lock = RedisDbLock(base)
    url = lock.acquire()
    try:
        yield url
    finally:
        lock.release(flush=True)


@contextlib.asynccontextmanager
async def temporary_database(prefix: str, base: str = BASE_DB) -> AsyncIterator[str]:
    """A new migrated database, dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(base)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await store.connect(url)
        try:
            await store.migrate(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
