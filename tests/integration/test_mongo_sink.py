"""The MongoDB sink (issue 16) through the production client — pymongo's ``AsyncMongoClient`` over a real
socket — against the wire-level fake of tests/mongofake.py (or a real server at ``TEST_MONGODB_URI``).

A job with ``sink = "mongo"`` writes its records as documents keyed by the key columns, the three conflict
policies keep their PostgreSQL meaning, a replayed batch leaves the same documents, and a MongoDB outage in
the middle of a run (a write applied whose reply is lost) fails that attempt, whose retry resumes from the
PostgreSQL checkpoint and converges to exactly the records of the run.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from batcher.commands import trigger_run
from batcher.errors import PermanentError
from batcher.handler import Batch, Stream
from batcher.settings import MongoSettings, Settings
from batcher.sinks import SinkRoute, WriteResult, write_batch
from batcher.sinks.mongo import MongoConnection
from batcher.testing import run_job_once, test_services, test_settings
from handlers.synthetic import SyntheticHandler, SyntheticParams
from tests.inprocess import daemon
from tests.mongofake import MongoTarget
from tests.polling import wait_for

COLUMNS = ("scope_key", "seq", "value", "amount", "attrs")


def mongo_settings(database_url: str, redis_url: str, target: MongoTarget, jobs: dict[str, Any],
                   **mongo_keys: Any) -> Settings:
    settings = test_settings(database_url, redis_url, jobs=jobs)
    return settings.model_copy(update={
        "mongo": MongoSettings(uri=target.uri, params=target.params, database=target.database, **mongo_keys),
        "daemon": settings.daemon.model_copy(update={"tick_seconds": 0.1})})


def connection(target: MongoTarget) -> MongoConnection:
    return MongoConnection(target.uri, target.params, target.database)


async def documents(target: MongoTarget, collection: str) -> list[dict[str, Any]]:
    """Every document of the collection, read with the production client, ordered by key."""
    conn = connection(target)
    try:
        docs = [d async for d in conn.database[collection].find({})]
    finally:
        await conn.close()
    return sorted(docs, key=lambda d: tuple(d["_id"].values()) if isinstance(d["_id"], dict) else (d["_id"],))


def synthetic_rows(scope_key: str, records: int, **params: Any) -> list[dict[str, Any]]:
    rows, _ = SyntheticHandler._generate(SyntheticParams(records=records, **params), scope_key, 0, records)
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


def synthetic_job(**params: Any) -> dict[str, Any]:
    return {"type": "synthetic", "sink": "mongo", "enabled": False, "interval_minutes": 1440,
            "params": {"records": 250, "batch_size": 100, **params}}


async def test_a_job_with_sink_mongo_writes_its_records_as_documents(db: asyncpg.Pool, database_url: str,
                                                                     redis_url: str, mongo: MongoTarget) -> None:
    """A synthetic job whose config says ``sink = "mongo"`` (its handler's streams default to PostgreSQL)
    writes exactly its records as documents: every column, ``_id`` = the key columns, ``ingested_at`` set;
    nothing reaches synthetic_records, and its checkpoint commits in PostgreSQL."""
    jobs = {"docs": synthetic_job(scope="job", conflict="update_if_changed", value_seed=3)}
    summary = await run_job_once(mongo_settings(database_url, redis_url, mongo, jobs), "docs")
    assert summary["status"] == "succeeded" and summary["records"] == 250, summary
    docs = await documents(mongo, "synthetic_records")
    assert [{c: d[c] for c in COLUMNS} for d in docs] == synthetic_rows("docs", 250, value_seed=3)
    assert all(d["_id"] == {"scope_key": "docs", "seq": d["seq"]} for d in docs)
    assert all(set(d) == {"_id", *COLUMNS, "ingested_at"} and d["ingested_at"].tzinfo for d in docs)
    assert await db.fetchval("SELECT count(*) FROM synthetic_records") == 0
    cursor = await db.fetchval("SELECT cursor FROM checkpoints WHERE job_name = 'docs'")
    assert cursor["next_seq"] == 250


def items(conflict: str) -> Stream:
    return Stream("items", "mongo_items", ("k",), ("v", "n"), conflict=conflict,  # type: ignore[arg-type]
                  bookkeeping_columns=("ingested_at",))


async def write(pool: asyncpg.Pool, target: MongoTarget, stream: Stream, records: list[tuple[Any, ...]]) -> int:
    """One batch through the sink dispatcher inside a PostgreSQL transaction, as the runner writes it."""
    return (await write_result(pool, target, stream, Batch(stream.name, records=records))).written


async def write_result(pool: asyncpg.Pool, target: MongoTarget, stream: Stream, batch: Batch) -> WriteResult:
    mongo_conn = connection(target)
    try:
        async with pool.acquire() as conn, conn.transaction():
            return await write_batch(conn, stream, batch, job_name="job", run_id=1,
                                     route=SinkRoute("mongo", mongo_conn))
    finally:
        await mongo_conn.close()


async def test_replaying_a_batch_twice_leaves_the_same_documents(db: asyncpg.Pool, mongo: MongoTarget) -> None:
    """The same batch written again (a replay after a crash between MongoDB and the checkpoint) leaves the
    documents exactly as they were — bookkeeping included — under ``ignore`` and ``update_if_changed``,
    and the same values under ``update`` (which sets bookkeeping on every write, as in PostgreSQL)."""
    records = [(k, f"v{k}", k * 10) for k in range(1, 51)] + [(3, "last wins", 0)]
    for conflict in ("ignore", "update_if_changed", "update"):
        stream = items(conflict)
        assert await write(db, mongo, stream, records) == 50
        first = await documents(mongo, "mongo_items")
        second_written = await write(db, mongo, stream, records)
        second = await documents(mongo, "mongo_items")
        if conflict == "update":
            assert [{**d, "ingested_at": None} for d in second] == [{**d, "ingested_at": None} for d in first]
        else:
            assert second_written == 0 and second == first, conflict
        assert next(d for d in first if d["k"] == 3)["v"] == "last wins"
        await _drop(mongo, "mongo_items")


async def _drop(target: MongoTarget, collection: str) -> None:
    conn = connection(target)
    try:
        await conn.database[collection].delete_many({})
    finally:
        await conn.close()


async def test_each_conflict_policy_means_what_it_means_in_postgres(db: asyncpg.Pool, mongo: MongoTarget) -> None:
    """After rows 1–3, a batch with 1 unchanged, 2 changed and 4 new: ``ignore`` only inserts 4;
    ``update_if_changed`` inserts 4 and changes 2, leaving 1 untouched (ingested_at included); ``update``
    sets the values and ingested_at of 1 and 2 and inserts 4."""
    first = [(1, "a", 1), (2, "b", 2), (3, "c", 3)]
    second = [(1, "a", 1), (2, "B", 20), (4, "d", 4)]
    expected_values = {"ignore": {1: ("a", 1), 2: ("b", 2), 3: ("c", 3), 4: ("d", 4)},
                       "update_if_changed": {1: ("a", 1), 2: ("B", 20), 3: ("c", 3), 4: ("d", 4)},
                       "update": {1: ("a", 1), 2: ("B", 20), 3: ("c", 3), 4: ("d", 4)}}
    expected_written = {"ignore": 1, "update_if_changed": 2, "update": 3}
    for conflict, values in expected_values.items():
        await write(db, mongo, items(conflict), first)
        before = {d["k"]: d for d in await documents(mongo, "mongo_items")}
        assert await write(db, mongo, items(conflict), second) == expected_written[conflict], conflict
        after = {d["k"]: d for d in await documents(mongo, "mongo_items")}
        assert {k: (d["v"], d["n"]) for k, d in after.items()} == values, conflict
        assert after[3]["ingested_at"] == before[3]["ingested_at"]
        if conflict == "update":
            assert after[1]["ingested_at"] >= before[1]["ingested_at"]
        else:
            assert after[1]["ingested_at"] == before[1]["ingested_at"], conflict
        if conflict == "ignore":
            assert after[2] == before[2]
        await _drop(mongo, "mongo_items")


DAYS = Stream("days", "mongo_days", ("site", "date", "h"), ("clicks",), conflict="update_if_changed",
              bookkeeping_columns=("fetched_at",))


async def test_a_replace_scope_batch_replaces_its_slice_of_documents_exactly(db: asyncpg.Pool,
                                                                            mongo: MongoTarget) -> None:
    """``Batch.replace_scope`` (key values, e.g. a site's day): the slice's documents are deleted before the
    batch's records are upserted — vanished rows go, changed rows change, other slices stay — and the same
    batch replayed leaves the same values (the GSC handler's way of re-reading a day, on either sink)."""
    d1, d2 = date(2026, 11, 1), date(2026, 11, 2)
    await write(db, mongo, DAYS, [("s", d1, "a", 1), ("s", d1, "b", 2), ("s", d1, "c", 3), ("s", d2, "a", 9),
                                  ("t", d1, "a", 7)])
    batch = Batch("days", records=[("s", d1, "a", 10), ("s", d1, "d", 4)])
    batch.replace_scope = {"site": "s", "date": d1}  # type: ignore[attr-defined]  # a field on the j-gsc branch
    for _ in range(2):
        await write_result(db, mongo, DAYS, batch)
        docs = await documents(mongo, "mongo_days")
        midnight = {d: datetime(d.year, d.month, d.day, tzinfo=UTC) for d in (d1, d2)}
        assert sorted((d["site"], d["date"], d["h"], d["clicks"]) for d in docs) == [
            ("s", midnight[d1], "a", 10), ("s", midnight[d1], "d", 4), ("s", midnight[d2], "a", 9),
            ("t", midnight[d1], "a", 7)]
    bad = Batch("days", records=[])
    bad.replace_scope = {"clicks": 1}  # type: ignore[attr-defined]
    with pytest.raises(PermanentError, match="non-key columns"):
        await write_result(db, mongo, DAYS, bad)


async def test_records_mongodb_cannot_store_become_dead_letters(db: asyncpg.Pool, mongo: MongoTarget) -> None:
    """A record whose value BSON cannot hold (an integer beyond 64 bits) becomes a dead letter (origin
    ``database``, MongoDB's reason) in PostgreSQL; the other records of the batch are written."""
    result = await write_result(db, mongo, items("update"),
                                Batch("items", records=[(1, "a", 1), (2, "b", 2 ** 70), (3, "c", 3)]))
    assert (result.written, result.dead_lettered, result.database_rejected) == (2, 1, 1)
    assert [d["k"] for d in await documents(mongo, "mongo_items")] == [1, 3]
    letter = await db.fetchrow("SELECT * FROM dead_letters")
    assert letter["origin"] == "database" and "MongoDB cannot store the record" in letter["reason"]
    assert json.loads(letter["payload"]) == {"k": 2, "v": "b", "n": 2 ** 70}


async def test_dead_letter_replay_never_writes_a_mongo_jobs_records_into_postgres(
        db: asyncpg.Pool, database_url: str, redis_url: str, mongo: MongoTarget) -> None:
    """``dead-letters replay`` of a job with ``sink = "mongo"``: a kept database reject of its stream is
    skipped with a reason and stays unresolved; it is not written into the PostgreSQL table."""
    from batcher.replay import replay_as_run

    settings = mongo_settings(database_url, redis_url, mongo, {"docs": synthetic_job()})
    async with test_services(settings, http=False) as services:
        await db.execute("INSERT INTO dead_letters (job_name, stream, origin, reason, payload, payload_hash) "
                         "VALUES ('docs', 'run_ignore', 'database', 'r', $1, 'h')",
                         json.dumps({"scope_key": "x", "seq": 1, "value": "v", "amount": 1, "attrs": None}))
        result = await replay_as_run(services, "docs", {s.name: s for s in SyntheticHandler.streams}, wait=True)
    assert (result["skipped"], result["resolved"], result["written"]) == (1, 0, 0), result
    assert "goes to mongo" in result["reasons"][0]
    assert await db.fetchval("SELECT count(*) FROM synthetic_records") == 0
    assert await db.fetchval("SELECT resolved_at FROM dead_letters") is None


async def test_a_mongo_outage_mid_run_fails_the_attempt_and_the_retry_converges(
        db: asyncpg.Pool, database_url: str, redis_url: str, mongo: MongoTarget) -> None:
    """The third bulk write is applied but its reply is lost and MongoDB stays down: that attempt fails
    (transient, its PostgreSQL transaction rolled back) and queues a retry; once MongoDB is back the chain
    resumes from the last committed checkpoint, rewrites the lost batch idempotently and ends with exactly
    the run's 60 records as documents."""
    fake = mongo.require_fake()
    jobs = {"outage": {**synthetic_job(records=60, batch_size=10, delay_ms=5), "max_retries": 50,
                       "retry_base_seconds": 0}}
    settings = mongo_settings(database_url, redis_url, mongo, jobs)
    async with test_services(settings, http=False) as services, daemon(services):
        fake.crash_after_updates = 3
        first, _ = await trigger_run(services.pool, services.registry, "outage", {})
        failed = await wait_for(lambda: db.fetchrow("SELECT * FROM batch_runs WHERE id = $1 AND status = 'failed'",
                                                    first), 20, what="the first attempt failed")
        fake.down = False
        done = await wait_for(lambda: db.fetchrow("SELECT * FROM batch_runs WHERE root_run_id = $1 AND "
                                                  "status = 'succeeded'", first), 30, what="the chain succeeded")
    assert failed["reason"] == "transient_error" and "MongoDB" in failed["errors"][0], dict(failed)
    assert done["attempt"] >= 2
    docs = await documents(mongo, "synthetic_records")
    assert [{c: d[c] for c in COLUMNS} for d in docs] == synthetic_rows(str(first), 60)
