"""batcher.store against real PostgreSQL: the binary JSON/JSONB codecs (DESIGN §7) and the named queries.

asyncpg's ``copy_records_to_table`` into a ``jsonb`` column needs the jsonb codec in binary format; a
text-format codec breaks COPY. These tests COPY Python values through the pool into ``jsonb`` (and
``json``) columns and read them back equal, unicode included, and pin the round trip of nested values
through query parameters.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from batcher import store

pytestmark = pytest.mark.timeout(30)

NESTED: dict[str, Any] = {
    "name": "Zoë Ñúñez — 東京 🚀",
    "combining": "e\u0301",  # e + combining acute, kept as two code points
    "rtl": "مرحبا",
    "escapes": 'quote " backslash \\ newline \n tab \t',
    "numbers": {"int": 42, "neg": -7, "big": 2**62, "float": 0.1, "exp": 1.5e-300},
    "flags": [True, False, None],
    "list": [1, "two", {"three": [3, [3.5]]}, []],
    "empty": {},
    "deep": {"a": {"b": {"c": {"d": {"e": ["f"]}}}}},
}


@pytest.fixture
async def scratch_table(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A table of its own in the session database (id, jsonb, json), dropped after the test."""
    name = f"store_json_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, doc jsonb, raw json)")
    yield name
    await pool.execute(f"DROP TABLE IF EXISTS {name}")


async def test_copy_into_jsonb_through_the_pool(pool: asyncpg.Pool, scratch_table: str) -> None:
    """pool.copy_records_to_table with dict/list/scalar values in jsonb and json columns works, and
    every value reads back equal (unicode and nesting intact)."""
    values: list[Any] = [NESTED, [1, 2, {"x": "ÿ"}], "just a string ✓", 12.5, True, {"k": None}]
    records = [(i, v, v) for i, v in enumerate(values)]
    records.append((len(values), None, None))  # SQL NULL, not JSON null
    result = await pool.copy_records_to_table(scratch_table, records=records, columns=["id", "doc", "raw"])
    assert result == f"COPY {len(records)}"
    rows = await pool.fetch(f"SELECT id, doc, raw FROM {scratch_table} ORDER BY id")
    assert [(r["id"], r["doc"], r["raw"]) for r in rows] == records


async def test_copy_into_synthetic_records(db: asyncpg.Pool) -> None:
    """The sink's real target: COPY rows with a jsonb ``attrs`` column into synthetic_records."""
    records = [("scope-ü", n, f"v-{n}-✓", n * 10, {"n": n, "label": "日本語", "window": None})
               for n in range(50)]
    await db.copy_records_to_table("synthetic_records", records=records,
                                   columns=["scope_key", "seq", "value", "amount", "attrs"])
    rows = await db.fetch("SELECT scope_key, seq, value, amount, attrs FROM synthetic_records "
                          "WHERE scope_key = 'scope-ü' ORDER BY seq")
    assert [tuple(r) for r in rows] == records


async def test_jsonb_is_stored_as_real_json(pool: asyncpg.Pool, scratch_table: str) -> None:
    """What COPY wrote is real jsonb, queryable by PostgreSQL (not a JSON string inside jsonb), with
    non-ASCII stored as characters."""
    await pool.copy_records_to_table(scratch_table, records=[(1, NESTED, NESTED)],
                                     columns=["id", "doc", "raw"])
    row = await pool.fetchrow(
        f"SELECT jsonb_typeof(doc) AS t, doc->>'name' AS name, doc #>> '{{deep,a,b,c,d,e,0}}' AS leaf, "
        f"(doc->'numbers'->>'big')::bigint AS big, raw->>'rtl' AS rtl FROM {scratch_table} WHERE id = 1")
    assert dict(row) == {"t": "object", "name": NESTED["name"], "leaf": "f", "big": 2**62, "rtl": "مرحبا"}


@pytest.mark.parametrize("value", [
    NESTED, [], {}, [None], "", "plain", "ü🚀", 0, -1, 2**53 + 1, 3.14159, True, False,
    {"nul-free": "\u00a0\u2028\u2029"},
])
async def test_json_round_trip_through_parameters(pool: asyncpg.Pool, value: Any) -> None:
    """Nested and scalar values survive a round trip as query parameters, for jsonb and json."""
    assert await pool.fetchval("SELECT $1::jsonb", value) == value
    assert await pool.fetchval("SELECT $1::json", value) == value


async def test_json_null_and_sql_null(pool: asyncpg.Pool) -> None:
    """Python None as a parameter is SQL NULL; a JSON null inside a value stays None."""
    assert await pool.fetchval("SELECT $1::jsonb IS NULL", None) is True
    assert await pool.fetchval("SELECT 'null'::jsonb") is None
    assert await pool.fetchval("SELECT $1::jsonb -> 'a'", {"a": None}) is None


async def test_nul_in_jsonb_is_a_class_22_error(pool: asyncpg.Pool, scratch_table: str) -> None:
    """A NUL character cannot go into jsonb: SQLSTATE 22P05 (class 22, so the sink can dead-letter the
    row), through COPY and through parameters alike."""
    with pytest.raises(asyncpg.DataError) as copy_error:
        await pool.copy_records_to_table(scratch_table, records=[(1, {"a": "x\x00y"}, None)],
                                         columns=["id", "doc", "raw"])
    assert copy_error.value.sqlstate == "22P05"
    with pytest.raises(asyncpg.DataError) as param_error:
        await pool.fetchval("SELECT $1::jsonb", {"a": "x\x00y"})
    assert param_error.value.sqlstate == "22P05"


async def test_every_named_query_prepares(pool: asyncpg.Pool) -> None:
    """Every statement of queries.sql is non-empty and prepares against the migrated schema (catches
    typos and references to missing columns before any code path runs them)."""
    assert store.Q, "no named queries loaded"
    failures = {}
    async with pool.acquire() as conn:
        for name, sql in store.Q.items():
            assert sql.strip(), f"query {name!r} is empty"
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
    assert not failures, failures
