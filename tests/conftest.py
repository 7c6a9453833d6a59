"""Shared fixtures: real PostgreSQL and Redis, never mocks of our own storage.

- Each test session creates its own PostgreSQL database on ``TEST_DATABASE_URL`` (default
  ``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it, and drops it at the end.
- Redis tests claim a free db number among 1–9 on ``TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379``)
  with ``SET lock token NX PX``, flush only that db (keeping the lock) and renew the lock while they run.
- An unreachable service fails the test with a message naming it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis

from batcher import store

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_LOCK_KEY = "batcher:test-session-lock"
REDIS_LOCK_MS = 60_000
#: The MongoDB fixtures (``mongo``: the wire-level fake, or a real server at TEST_MONGODB_URI).
pytest_plugins = ["tests.mongofake"]
CORE_TABLES = ("run_logs", "dead_letters", "checkpoints", "batch_runs", "batch_config", "workers",
               "synthetic_records")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    """Logs as the daemon configures them (console renderer, info), so run_logs capture works."""
    from batcher.logs import configure_logging

    configure_logging("console", "info")


@pytest.fixture(autouse=True)
def _restore_logging(_logging: None) -> Iterator[None]:
    """A test that reconfigures logging (an in-process CLI command with BATCHER_LOG_LEVEL=warning, the
    logging tests' reset) must not leave later tests without info entries in run_logs: put the session's
    configuration back when a test changed it."""
    import structlog

    before = structlog.get_config()
    yield
    if structlog.get_config() != before:
        from batcher.logs import configure_logging

        configure_logging("console", "info")


@pytest.fixture(autouse=True)
def _keep_event_loop() -> Iterator[None]:
    """A sync test that calls ``asyncio.run`` (the CLI does) unsets the thread's event loop when it ends;
    put the session loop back so the async tests after it still find it."""
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)  # peek: get_event_loop() would create one
    loop: asyncio.AbstractEventLoop | None = getattr(local, "_loop", None)
    yield
    if loop is not None and not loop.is_closed():
        asyncio.set_event_loop(loop)


def _run_aside(coro: Any) -> None:
    """Run a coroutine on a private loop, leaving the thread's current event loop alone (asyncio.run would
    unset it and break the async tests that follow)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A throw-away, migrated PostgreSQL database for this test session."""
    name = f"batcher_test_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        try:
            conn = await asyncpg.connect(TEST_DATABASE_URL, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            pytest.fail(f"PostgreSQL is down or unreachable at {TEST_DATABASE_URL}: {exc}", pytrace=False)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        conn = await store.connect(_with_database(TEST_DATABASE_URL, name))
        try:
            await store.migrate(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(TEST_DATABASE_URL, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run_aside(create())
    yield _with_database(TEST_DATABASE_URL, name)
    _run_aside(drop())


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session database, with batcher's codecs."""
    p = await store.create_pool(database_url, size=8)
    yield p
    await p.close()


@pytest.fixture
async def db(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The session pool, with the core tables emptied so each test starts from a clean slate."""
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {', '.join(CORE_TABLES)} RESTART IDENTITY CASCADE")
    return pool


_RENEW_IF_OURS = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                  "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0")
_DELETE_IF_OURS = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class _RedisDbLock:
    """Holds the lock on one Redis db number (1–9) and renews it from a thread until released."""

    def __init__(self, base_url: str) -> None:
        self.token = uuid.uuid4().hex
        self.number: int | None = None
        self.client: redis.Redis | None = None
        self._stop = threading.Event()
        self._base = base_url

    def acquire(self) -> int:
        for number in range(1, 10):
            client = redis.Redis.from_url(self._base, db=number, socket_timeout=5)
            try:
                got = client.set(REDIS_LOCK_KEY, self.token, nx=True, px=REDIS_LOCK_MS)
            except redis.RedisError as exc:
                pytest.fail(f"Redis is down or unreachable at {self._base}: {exc}", pytrace=False)
            if got:
                pipe = client.pipeline(transaction=True)
                pipe.flushdb()
                pipe.set(REDIS_LOCK_KEY, self.token, px=REDIS_LOCK_MS)
                pipe.execute()
                self.number, self.client = number, client
                threading.Thread(target=self._renew, daemon=True).start()
                return number
            client.close()
        pytest.fail("no free Redis db among 1–9 (all locked by other test sessions)", pytrace=False)

    def _renew(self) -> None:
        while not self._stop.wait(REDIS_LOCK_MS / 3000):
            assert self.client is not None
            try:
                self.client.eval(_RENEW_IF_OURS, 1, REDIS_LOCK_KEY, self.token, REDIS_LOCK_MS)
            except redis.RedisError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self.client is not None:
            self.client.eval(_DELETE_IF_OURS, 1, REDIS_LOCK_KEY, self.token)
            self.client.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL whose db number (1–9) belongs to this test session."""
    lock = _RedisDbLock(TEST_REDIS_URL)
    number = lock.acquire()
    yield f"{TEST_REDIS_URL.rstrip('/')}/{number}"
    lock.release()


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client on the session's Redis db, emptied (lock kept) before the test."""
    client = redis.Redis.from_url(redis_url)
    token = client.get(REDIS_LOCK_KEY)
    pipe = client.pipeline(transaction=True)
    pipe.flushdb()
    if token:
        pipe.set(REDIS_LOCK_KEY, token, px=REDIS_LOCK_MS)
    pipe.execute()
    yield client
    client.close()
