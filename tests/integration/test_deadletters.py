"""Dead letters against real PostgreSQL: payload encoding, list, purge and replay after a fix."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from batcher import deadletters, sinks
from batcher.handler import Batch, Rejected, Stream

TABLE_DDL = """
DROP TABLE IF EXISTS dl_items;
CREATE TABLE dl_items (
    k      bigint PRIMARY KEY,
    label  text NOT NULL,
    day    date,
    price  numeric(8, 2),
    seen   timestamptz,
    attrs  jsonb,
    CONSTRAINT label_not_forbidden CHECK (label <> 'forbidden')
)
"""


def parse_item(payload: str) -> tuple[Any, ...]:
    """A handler's parse_raw: the upstream record is {"k": int, "label": str}."""
    obj = json.loads(payload)
    if not isinstance(obj, dict) or "label" not in obj:
        raise ValueError("record has no label")
    return (int(obj["k"]), obj["label"], None, None, None, None)


STREAM = Stream(name="items", table="dl_items", key_columns=("k",),
                value_columns=("label", "day", "price", "seen", "attrs"), conflict="update_if_changed",
                json_columns=("attrs",), parse_raw=parse_item)
PLAIN = Stream(name="plain", table="dl_items", key_columns=("k",),
               value_columns=("label", "day", "price", "seen", "attrs"))


@pytest.fixture
async def items(db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """A fresh ``dl_items`` table (with a CHECK constraint to violate) and empty core tables."""
    async with db.acquire() as conn:
        await conn.execute(TABLE_DDL)
    sinks.reset_caches()
    yield db


async def write(pool: asyncpg.Pool, stream: Stream, batch: Batch, run_id: int = 1) -> sinks.WriteResult:
    async with pool.acquire() as conn, conn.transaction():
        return await sinks.write_batch(conn, stream, batch, job_name="job", run_id=run_id)


async def fetch(pool: asyncpg.Pool, sql: str, *args: Any) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch(sql, *args)


def test_payloads_are_json_text_without_nul_and_hashed_over_the_original() -> None:
    """Text, bytes (UTF-8 or not), NUL and rows with dates/decimals encode to NUL-free JSON text."""
    raw = b"\xff\xfe\x00bin"
    payload, digest = sinks.encode_payload(raw)
    assert json.loads(payload) == {"$base64": base64.b64encode(raw).decode()}
    assert digest == hashlib.sha256(raw).hexdigest()
    payload, digest = sinks.encode_payload("a\x00b")
    assert "\x00" not in payload and json.loads(payload) == "a\x00b"
    assert digest == hashlib.sha256(b"a\x00b").hexdigest()
    row = {"when": datetime(2024, 1, 2, tzinfo=UTC), "price": Decimal("1.50"), "blob": b"\x00\x01"}
    payload, _ = sinks.encode_payload(row)
    assert json.loads(payload) == {"when": "2024-01-02T00:00:00+00:00", "price": "1.50", "blob": "\x00\x01"}
    assert sinks.encode_payload({"a": 1, "b": 2})[1] == sinks.encode_payload({"b": 2, "a": 1})[1]
    assert sinks.encode_payload("x\udcff")[0] == '"x\\udcff"'


async def test_nul_and_non_utf8_payloads_are_stored_and_hashed(items: asyncpg.Pool) -> None:
    """Handler rejects holding NUL and non-UTF-8 bytes are kept (as text) and deduplicated by hash."""
    raws: list[Any] = [b"\xff\x00\x80", "nul\x00text", {"v": "\x00", "n": [1, None]}, b"plain utf8"]
    batch = Batch(stream="items", rejected=[Rejected(raw=r, reason="bad") for r in raws])
    assert (await write(items, STREAM, batch)).dead_lettered == 4
    assert (await write(items, STREAM, batch)).dead_lettered == 0
    stored = await fetch(items, "SELECT payload, payload_hash FROM dead_letters ORDER BY id")
    assert [json.loads(r["payload"]) for r in stored] == [
        {"$base64": base64.b64encode(b"\xff\x00\x80").decode()}, "nul\x00text", {"v": "\x00", "n": [1, None]},
        "plain utf8"]
    assert stored[0]["payload_hash"] == hashlib.sha256(b"\xff\x00\x80").hexdigest()
    assert stored[1]["payload_hash"] == hashlib.sha256(b"nul\x00text").hexdigest()


async def test_list_and_purge(items: asyncpg.Pool) -> None:
    """list is newest first, per job, unresolved unless asked; purge deletes a job's (optionally older)."""
    rejected = [Rejected(raw=n, reason="r") for n in range(3)]
    await write(items, STREAM, Batch(stream="items", rejected=rejected))
    async with items.acquire() as conn:
        await conn.execute("UPDATE dead_letters SET resolved_at = now() WHERE payload = '0'")
        await conn.execute("UPDATE dead_letters SET created_at = now() - interval '3 days' "
                           "WHERE payload = '1'")
        await conn.execute("INSERT INTO dead_letters (job_name, stream, origin, reason, payload, "
                           "payload_hash) VALUES ('other', 's', 'handler', 'r', '9', 'h')")
    listed = await deadletters.list_dead_letters(items, "job", 10)
    assert [d["payload"] for d in listed] == ["2", "1"]
    assert len(await deadletters.list_dead_letters(items, "job", 10, include_resolved=True)) == 3
    assert len(await deadletters.list_dead_letters(items, None, 10)) == 3
    assert len(await deadletters.list_dead_letters(items, None, 1)) == 1
    before = datetime.now(UTC) - timedelta(days=1)
    assert await deadletters.purge_dead_letters(items, "job", before) == 1
    assert await deadletters.purge_dead_letters(items, "job", None) == 2
    assert [d["job_name"] for d in await deadletters.list_dead_letters(items, None, 10)] == ["other"]


async def test_replay_resolves_fixed_rows_and_keeps_the_rest(items: asyncpg.Pool) -> None:
    """After a fix (dropping a CHECK), replay writes the fixed rows, resolves them, and updates the
    reason of rows that still fail (a NUL stays invalid); typed columns survive the JSON round trip."""
    seen = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    good = (1, "ok", date(2024, 1, 31), Decimal("12.34"), seen, {"x": [1, 2]})
    fixed = (2, "forbidden", date(2024, 2, 29), Decimal("0.05"), seen, {"y": None})
    broken = (3, "nul\x00", None, None, None, None)
    result = await write(items, PLAIN, Batch(stream="plain", records=[good, fixed, broken]))
    assert (result.written, result.dead_lettered) == (1, 2)
    async with items.acquire() as conn:
        await conn.execute("ALTER TABLE dl_items DROP CONSTRAINT label_not_forbidden")
    replay = await deadletters.replay_dead_letters(items, "job", {"plain": PLAIN}, run_id=42)
    assert (replay.resolved, replay.written, replay.still_failing, replay.skipped) == (1, 1, 1, 0)
    assert replay.reasons[0].startswith("22021")
    got = await fetch(items, "SELECT k, label, day, price, seen, attrs FROM dl_items ORDER BY k")
    assert [tuple(r) for r in got] == [good, fixed]
    letters = await fetch(items, "SELECT payload, resolved_at, run_id, reason FROM dead_letters ORDER BY id")
    assert letters[0]["resolved_at"] is not None and letters[0]["run_id"] == 42
    assert letters[1]["resolved_at"] is None and letters[1]["run_id"] == 42
    assert letters[1]["reason"].startswith("22021")
    again = await deadletters.replay_dead_letters(items, "job", {"plain": PLAIN}, run_id=43)
    assert (again.resolved, again.still_failing) == (0, 1)


async def test_replay_uses_parse_raw_for_handler_rejects(items: asyncpg.Pool) -> None:
    """Handler rejects go through the stream's parse_raw; still-invalid ones get the parse error as reason;
    a stream without parse_raw, or an unknown stream, skips them."""
    rejected = [Rejected(raw={"k": 5, "label": "five"}, reason="was bad"),
                Rejected(raw={"k": 6}, reason="was bad")]
    await write(items, STREAM, Batch(stream="items", rejected=rejected))
    await write(items, PLAIN, Batch(stream="plain", rejected=[Rejected(raw={"k": 7}, reason="r")]))
    await write(items, PLAIN, Batch(stream="gone", rejected=[Rejected(raw={"k": 8}, reason="r")]))
    async with items.acquire() as conn:
        await conn.execute("UPDATE dead_letters SET stream = 'gone' WHERE payload = '{\"k\":8}'")
    replay = await deadletters.replay_dead_letters(items, "job", {"items": STREAM, "plain": PLAIN}, None)
    assert (replay.resolved, replay.written, replay.still_failing, replay.skipped) == (1, 1, 1, 2)
    assert replay.reasons == ["replay: record has no label"]
    assert [tuple(r) for r in await fetch(items, "SELECT k, label FROM dl_items")] == [(5, "five")]
    open_letters = await fetch(items, "SELECT payload, reason FROM dead_letters WHERE resolved_at IS NULL "
                                      "ORDER BY id")
    assert [r["payload"] for r in open_letters] == ['{"k":6}', '{"k":7}', '{"k":8}']
    assert open_letters[0]["reason"] == "replay: record has no label"


async def test_replay_of_one_key_twice_writes_the_newest(items: asyncpg.Pool) -> None:
    """Two dead letters for the same key: the newest is written and both are resolved."""
    for label in ("first", "second"):
        await write(items, STREAM, Batch(stream="items", rejected=[Rejected(raw={"k": 1, "label": label},
                                                                              reason="r")]))
    replay = await deadletters.replay_dead_letters(items, "job", {"items": STREAM}, None)
    assert (replay.resolved, replay.written) == (2, 1)
    assert [tuple(r) for r in await fetch(items, "SELECT k, label FROM dl_items")] == [(1, "second")]
