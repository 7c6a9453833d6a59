"""The MongoDB job-history mirror (issue 16): finished runs in ``jobhistories``, in the original schema,
through the production client against the wire-level fake (tests/mongofake.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from batcher.errors import TransientError
from batcher.jobhistory import COLLECTION, HistoryMirror
from batcher.sinks.mongo import MongoConnection
from batcher.testing import run_job_once
from tests.integration.test_mongo_sink import connection, mongo_settings
from tests.mongofake import MongoTarget
from tests.polling import wait_for

SCHEMA = {"_id", "status", "sourceId", "startTime", "endTime", "errors", "data", "jobId", "name",
          "runtimeMilliseconds", "ingressBytes", "apiCalls"}


def job(**params: Any) -> dict[str, Any]:
    return {"type": "synthetic", "enabled": False, "interval_minutes": 1440,
            "params": {"records": 30, "batch_size": 10, **params}}


async def history(target: MongoTarget) -> dict[int, dict[str, Any]]:
    conn = connection(target)
    try:
        return {d["_id"]: d async for d in conn.database[COLLECTION].find({})}
    finally:
        await conn.close()


async def test_the_job_history_document_of_a_run_matches_the_original_schema(
        db: asyncpg.Pool, database_url: str, redis_url: str, mongo: MongoTarget) -> None:
    """A succeeded and a failed run, mirrored: each document has exactly the original fields, each mapped
    from its batch_runs row (status, sourceId, startTime, endTime, errors, data, jobId, name,
    runtimeMilliseconds, ingressBytes, apiCalls; _id = run id); a second pass sends nothing new."""
    jobs = {"hist": job(), "broken": job(fail_at_batch=2, fail_mode="permanent")}
    settings = mongo_settings(database_url, redis_url, mongo, jobs, history=True)
    ok = await run_job_once(settings, "hist")
    bad = await run_job_once(settings, "broken")
    assert (ok["status"], bad["status"]) == ("succeeded", "failed")
    await db.execute("UPDATE batch_runs SET source_id = 'src-1' WHERE id = $1", ok["run_id"])
    conn = connection(mongo)
    try:
        mirror = HistoryMirror(db, conn)
        assert await mirror.mirror_once() == 2
        assert await mirror.mirror_once() == 0
    finally:
        await conn.close()
    docs = await history(mongo)
    for run_id in (ok["run_id"], bad["run_id"]):
        row = await db.fetchrow("SELECT * FROM batch_runs WHERE id = $1", run_id)
        doc = docs[run_id]
        assert set(doc) == SCHEMA
        assert doc["status"] == row["status"] and doc["sourceId"] == row["source_id"]
        assert doc["startTime"] == row["started_at"].replace(microsecond=row["started_at"].microsecond // 1000 * 1000)
        assert doc["endTime"] == row["finished_at"].replace(microsecond=row["finished_at"].microsecond // 1000 * 1000)
        assert doc["errors"] == list(row["errors"])
        assert (doc["jobId"], doc["name"]) == (row["job_name"], "synthetic")
        assert doc["runtimeMilliseconds"] == row["runtime_ms"]
        assert (doc["ingressBytes"], doc["apiCalls"]) == (row["ingress_bytes"], row["api_calls"])
        assert doc["data"] == {"trigger": "cli", "reason": row["reason"], "attempt": 1, "records": row["records"],
                               "deadLetters": 0, "itemsChecked": row["items_checked"], "itemsUpdated": 0,
                               "retryOf": None, "rootRunId": run_id, "progress": row["progress"],
                               "result": row["result"]}
    assert docs[ok["run_id"]]["sourceId"] == "src-1" and docs[ok["run_id"]]["data"]["records"] == 30
    assert docs[bad["run_id"]]["status"] == "failed" and "synthetic failure" in docs[bad["run_id"]]["errors"][0]


async def test_a_mongodb_outage_never_fails_a_run_and_the_mirror_catches_up(
        db: asyncpg.Pool, database_url: str, redis_url: str, mongo: MongoTarget) -> None:
    """With MongoDB down, runs succeed as usual while the mirror's passes fail and leave the PostgreSQL
    watermark unset; once MongoDB is back the running mirror task upserts every run it missed."""
    fake = mongo.require_fake()
    settings = mongo_settings(database_url, redis_url, mongo, {"hist": job()}, history=True)
    await db.execute("DELETE FROM jobhistory_mirror")
    conn = MongoConnection(mongo.uri, mongo.params, mongo.database)
    fake.down = True
    mirror = HistoryMirror(db, conn, interval=0.05)
    task = asyncio.create_task(mirror.run())
    try:
        runs = [await run_job_once(settings, "hist") for _ in range(3)]
        assert [r["status"] for r in runs] == ["succeeded"] * 3
        with pytest.raises(TransientError):
            await mirror.mirror_once()
        assert await db.fetchval("SELECT finished_at FROM jobhistory_mirror") is None
        fake.down = False
        await wait_for(lambda: _has_all(mongo, [r["run_id"] for r in runs]), 20, what="the mirror caught up")
    finally:
        task.cancel()
        await conn.close()
    newest = await db.fetchval("SELECT max(finished_at) FROM batch_runs")
    assert await db.fetchval("SELECT finished_at FROM jobhistory_mirror") == newest


async def _has_all(target: MongoTarget, run_ids: list[int]) -> bool:
    return set(run_ids) <= set(await history(target))
