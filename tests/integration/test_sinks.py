"""The PostgreSQL sink against real PostgreSQL: COPY fast path, conflict policies, poisoned rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from batcher import jsoncodec, sinks
from batcher.handler import Batch, ConflictPolicy, Rejected, Stream
from batcher.sinks import postgres

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS sink_items (
    k           bigint PRIMARY KEY,
    label       text NOT NULL,
    qty         integer CHECK (qty >= 0),
    price       numeric(6, 2),
    attrs       jsonb,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    changed_at  timestamptz NOT NULL DEFAULT now()
)
"""

STRATEGIES = ("temp_table", "unnest")


def item_stream(conflict: ConflictPolicy) -> Stream:
    return Stream(name=f"items_{conflict}", table="sink_items", key_columns=("k",),
                  value_columns=("label", "qty", "price", "attrs"), conflict=conflict,
                  bookkeeping_columns=("changed_at",), json_columns=("attrs",))


def rows(lo: int, hi: int, tag: str = "a") -> list[tuple[Any, ...]]:
    return [(k, f"{tag}{k}", k % 7, Decimal(k % 100) / 4, {"k": k, "tag": tag}) for k in range(lo, hi)]


@pytest.fixture
async def items(db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The test table ``sink_items``, empty, beside emptied core tables."""
    async with db.acquire() as conn:
        await conn.execute(TABLE_DDL)
        await conn.execute("TRUNCATE sink_items")
    sinks.reset_caches()  # no conflict hint from an earlier test: each test starts on the COPY path
    yield db


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test with each upsert strategy (temp table, unnest)."""
    monkeypatch.setattr(postgres, "UPSERT_STRATEGY", request.param)
    return str(request.param)


async def write(pool: asyncpg.Pool, stream: Stream, batch: Batch) -> sinks.WriteResult:
    async with pool.acquire() as conn, conn.transaction():
        return await sinks.write_batch(conn, stream, batch, job_name="job", run_id=7)


async def snapshot(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    async with pool.acquire() as conn:
        found = await conn.fetch("SELECT k, xmin::text, label, ingested_at, changed_at FROM sink_items "
                                 "ORDER BY k")
    return [tuple(r) for r in found]


async def dead_letters(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT * FROM dead_letters ORDER BY id")


async def test_new_rows_are_copied_with_bookkeeping_defaults(items: asyncpg.Pool) -> None:
    """New rows go in through COPY; bookkeeping columns get their DEFAULT now(); jsonb round-trips."""
    result = await write(items, item_stream("ignore"), Batch(stream="items_ignore", records=rows(0, 100)))
    assert (result.written, result.dead_lettered, result.reasons) == (100, 0, [])
    async with items.acquire() as conn:
        got = await conn.fetchrow("SELECT * FROM sink_items WHERE k = 9")
    assert got is not None
    assert got["attrs"] == {"k": 9, "tag": "a"} and got["price"] == Decimal("2.25")
    assert got["ingested_at"] is not None and got["changed_at"] is not None


@pytest.mark.parametrize("conflict", ["ignore", "update_if_changed"])
async def test_replayed_batch_changes_nothing(items: asyncpg.Pool, strategy: str,
                                              conflict: ConflictPolicy) -> None:
    """Replaying a batch under ignore/update_if_changed touches no row: same xmin, same timestamps."""
    stream = item_stream(conflict)
    await write(items, stream, Batch(stream=stream.name, records=rows(0, 300)))
    before = await snapshot(items)
    result = await write(items, stream, Batch(stream=stream.name, records=rows(0, 300)))
    assert result.written == 0
    assert await snapshot(items) == before


async def test_update_if_changed_rewrites_only_changed_rows(items: asyncpg.Pool, strategy: str) -> None:
    """Under update_if_changed only rows whose values differ are updated (and their bookkeeping moves)."""
    stream = item_stream("update_if_changed")
    await write(items, stream, Batch(stream=stream.name, records=rows(0, 50)))
    before = {r[0]: r for r in await snapshot(items)}
    changed = rows(0, 50)
    changed[3] = (3, "new label", 3, Decimal("0.75"), {"k": 3, "tag": "a"})
    changed[10] = (10, "a10", 3, Decimal("2.50"), {"k": 10, "tag": "b"})
    result = await write(items, stream, Batch(stream=stream.name, records=changed + rows(50, 55)))
    assert result.written == 7  # 2 changed + 5 new
    after = {r[0]: r for r in await snapshot(items)}
    for k in range(50):
        if k in (3, 10):
            assert after[k][1] != before[k][1] and after[k][4] > before[k][4]
            assert after[k][3] == before[k][3]  # ingested_at is not a bookkeeping column here
        else:
            assert after[k] == before[k]


async def test_replayed_batch_updates_under_update(items: asyncpg.Pool, strategy: str) -> None:
    """Under update every replayed row is rewritten: new xmin, bookkeeping set to the new now()."""
    stream = item_stream("update")
    await write(items, stream, Batch(stream=stream.name, records=rows(0, 40)))
    before = await snapshot(items)
    result = await write(items, stream, Batch(stream=stream.name, records=rows(0, 40)))
    assert result.written == 40
    after = await snapshot(items)
    assert all(a[1] != b[1] and a[4] > b[4] for a, b in zip(after, before, strict=True))


async def test_key_twice_in_a_batch_commits_last_wins(items: asyncpg.Pool, strategy: str) -> None:
    """A batch that carries a key twice commits, on both the COPY and the upsert path; the last wins."""
    stream = item_stream("update")
    batch = [*rows(0, 10), (4, "second", 1, None, None)]
    result = await write(items, stream, Batch(stream=stream.name, records=batch))
    assert result.written == 10
    again = [*rows(0, 10), (4, "third", 1, None, None), *rows(10, 12)]
    result = await write(items, stream, Batch(stream=stream.name, records=again))
    assert result.written == 12
    async with items.acquire() as conn:
        assert await conn.fetchval("SELECT label FROM sink_items WHERE k = 4") == "third"
        assert await conn.fetchval("SELECT count(*) FROM sink_items") == 12


def poisoned_rows() -> list[tuple[Any, ...]]:
    batch = rows(0, 500)
    batch[17] = (17, "nul\x00byte", 1, None, None)  # 22021
    batch[250] = (250, "negative", -5, None, None)  # 23514 check violation
    batch[498] = (498, "too big", 1, Decimal("123456.78"), None)  # 22003 numeric overflow
    return batch


async def test_poisoned_rows_are_dead_lettered_and_the_rest_commits(items: asyncpg.Pool) -> None:
    """3 poisoned rows among 500: 497 commit, 3 dead letters carry the database's reasons."""
    stream = item_stream("ignore")
    result = await write(items, stream, Batch(stream=stream.name, records=poisoned_rows()))
    assert (result.written, result.dead_lettered) == (497, 3)
    async with items.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sink_items") == 497
        assert await conn.fetchval("SELECT count(*) FROM sink_items WHERE k IN (17, 250, 498)") == 0
    letters = await dead_letters(items)
    by_key = {json.loads(d["payload"])["k"]: d for d in letters}
    assert sorted(by_key) == [17, 250, 498]
    assert by_key[17]["reason"].startswith("22021: invalid byte sequence")
    assert by_key[250]["reason"].startswith("23514: new row for relation")
    assert by_key[498]["reason"].startswith("22003: numeric field overflow")
    assert {d["origin"] for d in letters} == {"database"}
    assert {d["job_name"] for d in letters} == {"job"} and {d["run_id"] for d in letters} == {7}
    assert json.loads(by_key[17]["payload"])["label"] == "nul\x00byte"
    assert len(result.reasons) == 3 and result.database_rejected == 3


async def test_a_batch_copied_in_slices_lets_other_tasks_run_and_keeps_its_poison_rules(
        items: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch larger than COPY_SLICE is encoded slice by slice with the event loop free in between (a
    concurrent task runs while the first rows are encoded); the poisoned and unencodable rows among them
    are still dead letters and the rest commits."""
    monkeypatch.setattr(postgres, "COPY_SLICE", 64)
    encoded = 0
    real_dumps = jsoncodec.dumps

    def counting_dumps(value: Any) -> bytes:
        nonlocal encoded
        encoded += 1
        return real_dumps(value)

    monkeypatch.setattr(jsoncodec, "dumps", counting_dumps)
    seen_mid_copy: list[int] = []

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0)
            if 0 < encoded < 250:  # row 300 cannot be encoded: the first COPY stops there
                seen_mid_copy.append(encoded)

    stream = item_stream("ignore")
    batch = poisoned_rows()
    batch[300] = (300, "huge", 2**40, None, None)
    task = asyncio.create_task(ticker())
    try:
        result = await write(items, stream, Batch(stream=stream.name, records=batch))
    finally:
        task.cancel()
    assert (result.written, result.dead_lettered) == (496, 4)
    assert {json.loads(d["payload"])["k"] for d in await dead_letters(items)} == {17, 250, 300, 498}
    assert seen_mid_copy, "no other task ran while the batch was encoded"


async def test_replaying_a_poisoned_batch_adds_no_duplicate_dead_letter(items: asyncpg.Pool,
                                                                        strategy: str) -> None:
    """The same poisoned batch twice (second time on the upsert path) keeps exactly 3 dead letters."""
    stream = item_stream("update_if_changed")
    await write(items, stream, Batch(stream=stream.name, records=poisoned_rows()))
    before = await snapshot(items)
    result = await write(items, stream, Batch(stream=stream.name, records=poisoned_rows()))
    assert (result.written, result.dead_lettered, result.database_rejected) == (0, 0, 3)
    assert len(result.reasons) == 3
    assert len(await dead_letters(items)) == 3
    assert await snapshot(items) == before


async def test_client_side_encoding_errors_and_not_null_are_poison(items: asyncpg.Pool) -> None:
    """An integer asyncpg cannot encode and a NULL in a NOT NULL column are dead-lettered too."""
    stream = item_stream("ignore")
    batch = rows(0, 20)
    batch[5] = (5, "huge", 2**40, None, None)
    batch[6] = (6, None, 1, None, None)
    result = await write(items, stream, Batch(stream=stream.name, records=batch))
    assert (result.written, result.dead_lettered) == (18, 2)
    reasons = {json.loads(d["payload"])["k"]: d["reason"] for d in await dead_letters(items)}
    assert "int32" in reasons[5]
    assert reasons[6].startswith("23502: null value in column")


async def test_handler_rejects_are_kept_once_and_reopened_when_resolved(items: asyncpg.Pool) -> None:
    """Batch.rejected becomes origin-handler dead letters; a replay adds none; a resolved one reopens."""
    stream = item_stream("ignore")
    batch = Batch(stream=stream.name, records=rows(0, 3),
                  rejected=[Rejected(raw={"id": 1}, reason="no label"), Rejected(raw="line 2", reason="bad")])
    assert (await write(items, stream, batch)).dead_lettered == 2
    assert (await write(items, stream, batch)).dead_lettered == 0
    async with items.acquire() as conn:
        await conn.execute("UPDATE dead_letters SET resolved_at = now() WHERE payload = '\"line 2\"'")
    batch.rejected = [Rejected(raw="line 2", reason="still bad"), Rejected(raw={"id": 1}, reason="x")]
    assert (await write(items, stream, batch)).dead_lettered == 1
    letters = {d["payload"]: d for d in await dead_letters(items)}
    assert letters['"line 2"']["resolved_at"] is None and letters['"line 2"']["reason"] == "still bad"
    assert letters['{"id":1}']["reason"] == "no label"
    assert {d["origin"] for d in letters.values()} == {"handler"}


async def test_non_data_errors_propagate(items: asyncpg.Pool) -> None:
    """A stream naming a column the table lacks is a bug, not poison: the error propagates."""
    stream = Stream(name="bad", table="sink_items", key_columns=("k",), value_columns=("nope",))
    with pytest.raises(asyncpg.UndefinedColumnError):
        await write(items, stream, Batch(stream="bad", records=[(1, "x")]))
    assert await dead_letters(items) == []


async def test_synthetic_records_stream(db: asyncpg.Pool, strategy: str) -> None:
    """synthetic_records (jsonb attrs, ingested_at bookkeeping) through COPY then upsert, idempotently."""
    stream = Stream(name="run_update_if_changed", table="synthetic_records", key_columns=("scope_key", "seq"),
                    value_columns=("value", "amount", "attrs"), conflict="update_if_changed",
                    bookkeeping_columns=("ingested_at",), json_columns=("attrs",))
    records = [("r1", n, f"v{n}", n, {"n": n, "nested": [1, {"a": None}]}) for n in range(1000)]
    assert (await write(db, stream, Batch(stream=stream.name, records=records))).written == 1000
    assert (await write(db, stream, Batch(stream=stream.name, records=records))).written == 0
    records[0] = ("r1", 0, "v0", 0, {"n": 0, "nested": [2]})
    assert (await write(db, stream, Batch(stream=stream.name, records=records))).written == 1
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT attrs FROM synthetic_records WHERE seq = 0") == {"n": 0,
                                                                                          "nested": [2]}


async def test_after_a_conflict_new_rows_still_go_in(items: asyncpg.Pool, strategy: str) -> None:
    """After a conflicting batch the next writes go straight to the upsert: new rows are still counted,
    and once the hint runs out the COPY path is used again."""
    stream = item_stream("ignore")
    await write(items, stream, Batch(stream=stream.name, records=rows(0, 10)))
    assert (await write(items, stream, Batch(stream=stream.name, records=rows(0, 10)))).written == 0
    for n in range(sinks.UPSERT_FIRST_BATCHES + 2):
        batch = Batch(stream=stream.name, records=rows(10 + 10 * n, 20 + 10 * n))
        assert (await write(items, stream, batch)).written == 10
    assert sinks._upsert_first["sink_items"] == 0
    async with items.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sink_items") == 10 * (sinks.UPSERT_FIRST_BATCHES + 3)



async def test_non_data_database_errors_propagate(items: asyncpg.Pool) -> None:
    """A lock timeout (SQLSTATE 55P03) during the COPY is not about the rows: it propagates, no bisection,
    no dead letters."""
    async with items.acquire() as holder, holder.transaction():
        await holder.execute("LOCK TABLE sink_items IN ACCESS EXCLUSIVE MODE")
        async with items.acquire() as conn:
            with pytest.raises(asyncpg.LockNotAvailableError):
                async with conn.transaction():
                    await conn.execute("SET LOCAL lock_timeout = '50ms'")
                    await sinks.write_batch(conn, item_stream("ignore"),
                                            Batch(stream="x", records=rows(0, 10)), job_name="job", run_id=7)
    assert await dead_letters(items) == [] and await snapshot(items) == []


async def test_reasons_with_nul_and_surrogates_are_kept(items: asyncpg.Pool) -> None:
    """A handler's reason with a NUL or a lone surrogate is escaped, not a failed batch."""
    stream = item_stream("ignore")
    batch = Batch(stream=stream.name, rejected=[Rejected(raw=1, reason="bad \x00 byte"),
                                                Rejected(raw=2, reason="bad \udcff char")])
    result = await write(items, stream, batch)
    assert result.dead_lettered == 2
    assert result.reasons == ["bad \\u0000 byte", "bad \\udcff char"]
    assert [d["reason"] for d in await dead_letters(items)] == result.reasons


async def test_replace_scope_replaces_exactly_one_slice(db: asyncpg.Pool) -> None:
    """``Batch.replace_scope`` deletes the slice's existing rows in the batch's transaction before the
    records are written: changed rows are updated, vanished ones go, other slices stay; a scope naming a
    non-key column is refused (PermanentError) and deletes nothing."""
    from batcher.errors import PermanentError

    await db.execute("CREATE TABLE IF NOT EXISTS sink_slices (part text, k int, v text, "
                     "ingested_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (part, k))")
    await db.execute("TRUNCATE sink_slices")
    stream = Stream(name="slices", table="sink_slices", key_columns=("part", "k"), value_columns=("v",),
                    conflict="ignore", bookkeeping_columns=("ingested_at",))
    first = [("a", 1, "x"), ("a", 2, "x"), ("a", 3, "x"), ("b", 1, "x"), ("b", 2, "x")]
    await write(db, stream, Batch(stream="slices", records=first))
    again = Batch(stream="slices", records=[("a", 2, "changed"), ("a", 4, "new")], replace_scope={"part": "a"})
    await write(db, stream, again)
    await write(db, stream, again)  # a replay: the same rows
    found = {tuple(r) for r in await db.fetch("SELECT part, k, v FROM sink_slices")}
    assert found == {("a", 2, "changed"), ("a", 4, "new"), ("b", 1, "x"), ("b", 2, "x")}
    with pytest.raises(PermanentError, match="non-key"):
        await write(db, stream, Batch(stream="slices", records=[], replace_scope={"part": "b", "v": "x"}))
    assert await db.fetchval("SELECT count(*) FROM sink_slices") == 4


async def test_a_record_nested_too_deeply_is_a_dead_letter(items: asyncpg.Pool) -> None:
    """A record whose jsonb value is nested ~1,000 levels deep (orjson and the standard encoder both give
    up) is dead-lettered with a reason — its payload truncated past 200 levels — and the rest commits."""
    deep: Any = "leaf"
    for _ in range(1_000):
        deep = [deep]
    stream = item_stream("ignore")
    batch = rows(0, 10)
    batch[3] = (3, "deep", 1, None, {"d": deep})
    result = await write(items, stream, Batch(stream=stream.name, records=batch))
    assert (result.written, result.dead_lettered) == (9, 1)
    letters = await dead_letters(items)
    assert len(letters) == 1 and "nested too deeply" in letters[0]["reason"]
    assert "truncated" in letters[0]["payload"] and json.loads(letters[0]["payload"])["k"] == 3
