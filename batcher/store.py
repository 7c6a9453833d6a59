"""PostgreSQL access: the asyncpg pool, its codecs, schema migrations and the named queries.

Owns asyncpg (with :mod:`batcher.sinks` and :mod:`batcher.worker`). JSON and JSONB use binary-format
codecs so ``copy_records_to_table`` into ``jsonb`` columns works (a text codec breaks COPY). Every SQL
statement lives as a named, described block in ``sql/queries.sql`` of this package; :data:`Q` maps names
to statements. All SQL (``sql/schema.sql``, ``sql/migrations/``, ``sql/queries.sql``) is package data, read
through :mod:`importlib.resources`, so a plain (non-editable) install finds it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from batcher import jsoncodec
from batcher.errors import SchemaTooNewError, ServiceUnavailableError

log = structlog.get_logger("batcher.store")

SQL_DIR: Traversable = files("batcher") / "sql"
SCHEMA_FILE: Traversable = SQL_DIR / "schema.sql"
MIGRATIONS_DIR: Traversable = SQL_DIR / "migrations"
QUERIES_FILE: Traversable = SQL_DIR / "queries.sql"
MIGRATION_LOCK_KEY = 0x6261746368  # "batch": pg_advisory_xact_lock key for migrations
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _load_queries(path: Traversable) -> dict[str, str]:
    """Parse ``-- name: x`` blocks (comment lines after the name describe the statement)."""
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in [*path.read_text().splitlines(), "-- name: __end__"]:
        if line.startswith("-- name:"):
            if name is not None:
                queries[name] = "\n".join(lines).strip().rstrip(";")
            name, lines = line.split(":", 1)[1].strip(), []
        elif not line.startswith("--"):
            lines.append(line)
    return queries


Q: dict[str, str] = _load_queries(QUERIES_FILE)


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + jsoncodec.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return jsoncodec.loads(data[1:])


def _encode_json(value: Any) -> bytes:
    return jsoncodec.dumps(value)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Register binary JSON/JSONB codecs (Python values in, Python values out)."""
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb,
                              format="binary")
    await conn.set_type_codec("json", schema="pg_catalog", encoder=_encode_json, decoder=jsoncodec.loads,
                              format="binary")


# JIT compilation costs tens of ms per execution and pays off only for long analytic statements; ours are
# short but some (claim_runs) have plan costs above jit_above_cost, so it is off for our connections.
SERVER_SETTINGS = {"jit": "off"}


#: Seconds one connection attempt may take (asyncpg's default is 60: a black-holed host would stall start-up).
CONNECT_TIMEOUT = 10.0


async def create_pool(url: str, *, size: int = 10, min_size: int = 1) -> asyncpg.Pool:
    """The process's pool. Raises ServiceUnavailableError naming PostgreSQL when it cannot connect."""
    try:
        pool = await asyncpg.create_pool(url, min_size=min(min_size, size), max_size=size,
                                         init=init_connection, command_timeout=None, timeout=CONNECT_TIMEOUT,
                                         server_settings=SERVER_SETTINGS)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ServiceUnavailableError(f"PostgreSQL is unreachable: {type(exc).__name__}: {exc}") from None
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, timeout: float = 10.0) -> None:
    """Close the pool gracefully, waiting at most ``timeout`` s for connections still in use (asyncpg
    waits forever for them); then terminate it, so a connection that is never released cannot hold up
    the process's exit."""
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except TimeoutError:
        log.warning("pool_close_timeout", seconds=timeout)
        pool.terminate()


async def connect(url: str, *, timeout: float = 10.0) -> asyncpg.Connection:
    """A dedicated connection (LISTEN, liveness lock, CLI one-offs) with the same codecs."""
    try:
        conn = await asyncpg.connect(url, timeout=timeout, server_settings=SERVER_SETTINGS)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ServiceUnavailableError(f"PostgreSQL is unreachable: {type(exc).__name__}: {exc}") from None
    await init_connection(conn)
    return conn


def code_schema_version() -> int:
    """The newest schema version this code knows: 1 (schema.sql) or the highest migration number."""
    versions = [int(m.group(1)) for p in MIGRATIONS_DIR.iterdir() if (m := _MIGRATION_NAME.match(p.name))]
    return max([1, *versions])


def _pending_migrations(applied: set[int]) -> list[tuple[int, str, str]]:
    """Every numbered migration not applied yet, in number order — a lower number that lands after a
    higher one was applied is still applied, never skipped."""
    out = []
    for path in MIGRATIONS_DIR.iterdir():
        m = _MIGRATION_NAME.match(path.name)
        if m and int(m.group(1)) > 1 and int(m.group(1)) not in applied:
            out.append((int(m.group(1)), path.name.removesuffix(".sql"), path.read_text()))
    return sorted(out)


async def migrate(conn: Conn) -> list[str]:
    """Apply schema.sql (version 1) and the missing numbered migrations, under an advisory xact lock.

    Safe to run concurrently from many processes. Refuses a database newer than the code.
    Returns the names applied.
    """
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(Q["create_schema_migrations"])
        current = await conn.fetchval(Q["schema_version"]) or 0
        newest = code_schema_version()
        if current > newest:
            raise SchemaTooNewError(
                f"the database schema is version {current}, newer than this batcher "
                f"(knows up to {newest}); upgrade batcher before running it against this database")
        if current < 1:
            await conn.execute(SCHEMA_FILE.read_text())
            await conn.execute(Q["record_migration"], 1, "schema")
            applied.append("0001_schema")
        applied_versions = {int(v) for v in await conn.fetchval(Q["applied_versions"])}
        for version, name, sql in _pending_migrations(applied_versions):
            await conn.execute(sql)
            await conn.execute(Q["record_migration"], version, name)
            applied.append(name)
    return applied


async def schema_version(conn: Conn) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    return int(await conn.fetchval(Q["schema_version"]) or 0) if exists else 0


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """Acquire a pooled connection and open a transaction on it."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn


#: Errors that mean "the database is not reachable right now" (callers retry or reconnect).
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)
#: Any database error.
DB_ERRORS: tuple[type[BaseException], ...] = (*DB_UNAVAILABLE, asyncpg.PostgresError)
#: The database refused a value (SQLSTATE class 22: a NUL in text, a number out of range, a bad date): the
#: caller's input was wrong, the database is fine.
DB_DATA_ERRORS: tuple[type[BaseException], ...] = (asyncpg.DataError,)
UniqueViolation = asyncpg.UniqueViolationError
#: Database errors plus "cannot connect" (what a reconnect loop waits out).
DB_OR_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, ServiceUnavailableError)
#: A connection of our own or one borrowed from the pool: both run queries the same way.
Conn = asyncpg.Connection | PoolConnectionProxy
