"""The ``gsc`` handler with ``sink = "mongo"`` (issue 16 acceptance): the same Search Console run writes the
same rows as documents through the wire-level MongoDB fake (tests/mongofake.py), and a re-read day replaces
its documents exactly. Skipped until the gsc handler (branch j-gsc) is present.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

pytest.importorskip("handlers.gsc")
from batcher.fakes.gsc import FakeGsc, GscOptions  # after the skip: a j-gsc module
from batcher.testing import run_job_once
from tests.integration.test_mongo_sink import documents, mongo_settings
from tests.mongofake import MongoTarget

SECRET = "cs-" + uuid.uuid4().hex
REFRESH = "rt-" + uuid.uuid4().hex
A, B = "https://a.example/", "sc-domain:b.example"
COLUMNS = ("site", "search_type", "dimension_set", "date", "dims_hash", "query", "page", "country", "device",
           "search_appearance", "clicks", "impressions", "ctr", "position", "data_state")


def gsc_job(fake: FakeGsc, **keys: Any) -> dict[str, Any]:
    return {"type": "gsc", "enabled": False, "interval_minutes": 1440, **keys,
            "params": {"base_url": fake.url, "token_url": fake.token_url, "client_id": "client-1",
                       "sites": [A, B], "initial_days": 10, "client_secret_env": "GSC_MONGO_TEST_SECRET",
                       "refresh_token_env": "GSC_MONGO_TEST_REFRESH"}}


async def as_rows(target: MongoTarget) -> set[tuple[Any, ...]]:
    docs = await documents(target, "gsc_search_analytics")
    rows = {tuple(d[c].date() if c == "date" else d[c] for c in COLUMNS) for d in docs}
    assert len(rows) == len(docs)
    return rows


async def test_gsc_with_sink_mongo_writes_the_same_rows_as_documents(
        db: Any, database_url: str, redis_url: str, mongo: MongoTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """One GSC job writing to PostgreSQL and the same job with ``sink = "mongo"``: the documents hold
    exactly the table's rows (``_id`` = the key columns); rerunning the Mongo job (a replay of its days)
    leaves the same documents; a re-read day whose upstream rows changed (one changed, one vanished)
    holds exactly the new rows afterwards."""
    monkeypatch.setenv("GSC_MONGO_TEST_SECRET", SECRET)
    monkeypatch.setenv("GSC_MONGO_TEST_REFRESH", REFRESH)
    await db.execute("TRUNCATE gsc_search_analytics")
    options = GscOptions(sites={A: "siteOwner", B: "siteFullUser"}, client_secret=SECRET, refresh_token=REFRESH,
                         days_with_data=4, lag_days=2, rows_per_day=3)
    async with FakeGsc(options) as fake:
        settings = mongo_settings(database_url, redis_url, mongo,
                                  {"gsc-pg": gsc_job(fake), "gsc-mongo": gsc_job(fake, sink="mongo")})
        pg, mg = await run_job_once(settings, "gsc-pg"), await run_job_once(settings, "gsc-mongo")
        assert (pg["status"], mg["status"]) == ("succeeded", "succeeded"), (pg, mg)
        table = {tuple(r) for r in await db.fetch(f"SELECT {', '.join(COLUMNS)} FROM gsc_search_analytics")}
        assert mg["records"] == pg["records"] == len(table) > 0
        assert await as_rows(mongo) == table
        docs = await documents(mongo, "gsc_search_analytics")
        keys = ("site", "search_type", "dimension_set", "date", "dims_hash")
        assert all(d["_id"] == {k: d[k] for k in keys} for d in docs)
        assert (await run_job_once(settings, "gsc-mongo"))["status"] == "succeeded"
        assert await as_rows(mongo) == table
        newest = fake.data_days()[-1]
        changed = [dict(r) for r in fake.rows(A, newest)[:2]]
        changed[0]["clicks"] = 999.0
        fake.set_day(A, newest, changed)
        assert (await run_job_once(settings, "gsc-mongo"))["status"] == "succeeded"
        assert (await run_job_once(settings, "gsc-pg"))["status"] == "succeeded"
        table = {tuple(r) for r in await db.fetch(f"SELECT {', '.join(COLUMNS)} FROM gsc_search_analytics")}
        assert await as_rows(mongo) == table
        day = sorted(r[COLUMNS.index("clicks")] for r in table if r[0] == A and r[3] == newest)
        assert day == sorted([999, round(changed[1]["clicks"])])
        assert isinstance(newest, dt.date)
