"""The ``usage_aggregation`` handler on real Redis and PostgreSQL: exact values, set semantics, dead letters.

Key rules and params are checked as pure functions; the rest runs whole foreground runs through the real
runner (``batcher.testing.run_job_once``) against the session's PostgreSQL database and Redis db.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from batcher.testing import run_job_once, test_settings
from handlers.usage import (
    MAX_SCANS_PER_PAGE,
    MalformedKey,
    UsageAggregationHandler,
    UsageParams,
    UsageReader,
    glob_escape,
    key_date,
    match_pattern,
    parse_key,
    parse_value,
)
from tests.polling import query_until, wait_for

DATES = [dt.date(2025, 11, 1), dt.date(2025, 11, 2), dt.date(2025, 11, 3)]
METRICS = ["queries", "documents", "tokens", "api_calls", "storage_mb"]
MERCHANTS = [f"merchant_{n:03d}" for n in range(200)]
OUTSIDE = dt.date(2025, 11, 4)
#: Malformed keys of the requested dates (or of no date at all), with their value, or None for a hash.
MALFORMED: dict[bytes, bytes | None] = {
    b"usage:bad:merchant:2025-11-01:queries": b"5",   # merchant id with ':'
    b"usage:acme::queries": b"5",                      # empty date: no date at all
    b"usage:acme:2025-02-30:queries": b"5",            # not a real date
    b"usage:acme:2025-11-01:": b"5",                   # empty metric
    b"usage:acme:2025-11-01:notint": b"abc",
    b"usage:acme:2025-11-01:big": b"99999999999999999999",
    b"usage:acme:2025-11-01:float": b"1.5",
    b"usage:acme:2025-11-02:hash": None,               # not a string
    b"usage:\xff\xfe:2025-11-03:queries": b"7",       # not UTF-8
}
#: Keys that must be ignored: another date (even malformed), another prefix.
IGNORED = {b"usage:x:y:2025-11-09:queries": b"1", b"usage:acme:2025-11-04:queries": b"3",
           b"other:acme:2025-11-01:queries": b"4"}
RANGE = {"start": "2025-11-01", "end": "2025-11-03"}


def value_of(merchant: int, day: int, metric: int) -> int:
    return merchant * 1000 + day * 10 + metric + 1


def seed(client: redis.Redis) -> dict[tuple[str, dt.date, str], int]:
    """3 dates × 200 merchants × 5 metrics, the malformed and the ignored keys; returns the valid ones."""
    expected: dict[tuple[str, dt.date, str], int] = {}
    pipe = client.pipeline(transaction=False)
    for m, merchant in enumerate(MERCHANTS):
        for d, day in enumerate(DATES):
            for k, metric in enumerate(METRICS):
                value = value_of(m, d, k)
                pipe.incrby(f"usage:{merchant}:{day.isoformat()}:{metric}", value)
                expected[(merchant, day, metric)] = value
    for key, raw in {**MALFORMED, **IGNORED}.items():
        if raw is None:
            pipe.hset(key, "a", "1")
        else:
            pipe.set(key, raw)
    pipe.execute()
    return expected


@pytest.fixture
def usage_redis(redis_db: redis.Redis) -> Iterator[redis.Redis]:
    yield redis_db


@pytest.fixture
async def usage_db(db: Any) -> Any:
    await db.execute("TRUNCATE merchant_usage")
    return db


def settings_for(database_url: str, redis_url: str, **params: Any) -> Any:
    job = {"type": "usage_aggregation", "params": {"batch_size": 700, "chunk_size": 200, **params}}
    return test_settings(database_url, redis_url, jobs={"usage": job})


async def rows(pool: Any) -> dict[tuple[str, dt.date, str], tuple[int, dt.datetime]]:
    got = await pool.fetch("SELECT merchant_id, usage_date, metric_type, value, aggregated_at "
                           "FROM merchant_usage")
    return {(r[0], r[1], r[2]): (r[3], r[4]) for r in got}


def test_key_rules() -> None:
    """A key is valid with exactly four parts, none empty, a real YYYY-MM-DD date and UTF-8 without NUL;
    its date is its second-to-last part (None when that is no real date)."""
    assert parse_key(b"usage:acme_2024:2025-11-01:queries", "usage").merchant_id == "acme_2024"
    for bad, reason in [(b"usage:a:b:2025-11-01:q", "4"), (b"usage:a:2025-11-01", "4"),
                        (b"usage:a:20251101:q", "real date"), (b"usage::2025-11-01:q", "empty"),
                        (b"usage:\xff:2025-11-01:q", "UTF-8"), (b"usage:a\x00:2025-11-01:q", "NUL")]:
        with pytest.raises(MalformedKey, match=reason):
            parse_key(bad, "usage")
    assert key_date(b"usage:a:b:2025-11-01:q", "usage") == dt.date(2025, 11, 1)
    assert key_date(b"usage:a:2025-13-01:q", "usage") is None
    assert key_date(b"usage:a", "usage") is None


def test_value_rules() -> None:
    """Values are what Redis reads as a 64-bit integer: no sign '+', no leading zeros, no fractions."""
    assert parse_value(b"0") == 0
    assert parse_value(b"-12") == -12
    assert parse_value(b"9223372036854775807") == 2**63 - 1
    for bad in (b"9223372036854775808", b"+1", b"01", b"1.5", b" 1", b"", b"abc", b"-0"):
        with pytest.raises(MalformedKey):
            parse_value(bad)


def test_glob_escaping_and_params() -> None:
    """Merchant glob characters are escaped in MATCH; params pick dates and reject bad combinations."""
    assert glob_escape(b"a*b?[c]\\") == b"a\\*b\\?\\[c\\]\\\\"
    assert match_pattern("usage", "m*") == b"usage:m\\*:*"
    today = dt.date(2025, 11, 10)
    assert UsageParams().dates(today) == [dt.date(2025, 11, 9), today]
    assert UsageParams(start=DATES[0], end=DATES[2]).dates(today) == DATES
    for bad in ({"date": "2025-11-01", "start": "2025-11-01", "end": "2025-11-02"},
                {"start": "2025-11-02"}, {"start": "2025-11-02", "end": "2025-11-01"},
                {"merchant": "a:b"}, {"key_prefix": "a:b"}, {"date": "2025-13-01"}):
        with pytest.raises(ValueError):
            UsageParams.model_validate(bad)


def test_checkpoint_of_other_params_is_not_resumed() -> None:
    """A run-scoped cursor resumes only for the same key selection (dates, merchant, prefix)."""
    mine = UsageParams(date=DATES[0])
    state = UsageAggregationHandler.resume_state(None, mine)
    assert state["cursor"] == 0 and state["dates"] == ["2025-11-01"]
    moved = {**state, "cursor": 1234, "keys": 10}
    assert UsageAggregationHandler.resume_state(moved, mine)["cursor"] == 1234
    assert UsageAggregationHandler.resume_state(moved, UsageParams(date=DATES[1]))["cursor"] == 0


async def test_exact_values_dead_letters_and_idempotent_rerun(
        usage_db: Any, usage_redis: redis.Redis, database_url: str, redis_url: str) -> None:
    """3 dates × 200 merchants × 5 metrics plus malformed keys: every valid key's value is its row and
    nothing else is written; each malformed key is one dead letter with its reason; the run-scoped
    checkpoint is gone after success; a rerun leaves every row (aggregated_at included) untouched."""
    expected = seed(usage_redis)
    settings = settings_for(database_url, redis_url)
    summary = await run_job_once(settings, "usage", RANGE)
    assert summary["status"] == "succeeded", summary
    assert summary["records"] == len(expected) and summary["dead_letters"] == len(MALFORMED)
    first = await rows(usage_db)
    assert {k: v for k, (v, _) in first.items()} == expected
    letters = await usage_db.fetch("SELECT payload, reason, origin FROM dead_letters "
                                   "WHERE job_name = 'usage'")
    assert len(letters) == len(MALFORMED) and {r["origin"] for r in letters} == {"handler"}
    reasons = {r["payload"]: r["reason"] for r in letters}
    assert "not a string" in reasons['"usage:acme:2025-11-02:hash"']
    assert "64-bit" in reasons['"usage:acme:2025-11-01:big"']
    assert "UTF-8" in next(v for k, v in reasons.items() if "$base64" in k)
    assert await usage_db.fetchval("SELECT count(*) FROM checkpoints WHERE job_name = 'usage'") == 0
    again = await run_job_once(settings, "usage", RANGE)
    assert again["status"] == "succeeded" and again["dead_letters"] == 0
    assert await rows(usage_db) == first
    assert await usage_db.fetchval("SELECT count(*) FROM dead_letters") == len(MALFORMED)


async def test_merchant_rerun_changes_only_that_merchant(
        usage_db: Any, usage_redis: redis.Redis, database_url: str, redis_url: str) -> None:
    """After more INCRBYs for two merchants, a --merchant run updates exactly that merchant's rows (value
    and aggregated_at); the other merchant's rows keep their old value until a full run."""
    seed(usage_redis)
    settings = settings_for(database_url, redis_url)
    assert (await run_job_once(settings, "usage", RANGE))["status"] == "succeeded"
    before = await rows(usage_db)
    usage_redis.incrby("usage:merchant_007:2025-11-02:tokens", 5)
    usage_redis.incrby("usage:merchant_008:2025-11-02:tokens", 5)
    summary = await run_job_once(settings, "usage", {"date": "2025-11-02", "merchant": "merchant_007"})
    assert summary["status"] == "succeeded"
    after = await rows(usage_db)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {("merchant_007", DATES[1], "tokens")}
    key = ("merchant_007", DATES[1], "tokens")
    assert after[key][0] == before[key][0] + 5 and after[key][1] > before[key][1]


async def test_glob_characters_in_merchant_match_literally(
        usage_db: Any, usage_redis: redis.Redis, database_url: str, redis_url: str) -> None:
    """--merchant 'shop*' aggregates only the merchant literally named 'shop*', not 'shop1'."""
    usage_redis.set("usage:shop*:2025-11-01:queries", 3)
    usage_redis.set("usage:shop1:2025-11-01:queries", 4)
    summary = await run_job_once(settings_for(database_url, redis_url), "usage",
                                 {"date": "2025-11-01", "merchant": "shop*"})
    assert summary["status"] == "succeeded"
    assert {k: v for k, (v, _) in (await rows(usage_db)).items()} == {("shop*", DATES[0], "queries"): 3}


async def test_one_aggregation_at_a_time(usage_db: Any, usage_redis: redis.Redis, database_url: str,
                                         redis_url: str) -> None:
    """Two concurrent foreground runs of the configured job: the second waits for the first (the
    scheduler's one-running-run-per-job rule), so there is never more than one running row and the runs
    do not overlap in time."""
    pipe = usage_redis.pipeline(transaction=False)
    for n in range(20_000):
        pipe.set(f"usage:m{n}:2025-11-01:queries", n)
    pipe.execute()
    settings = settings_for(database_url, redis_url, batch_size=100, chunk_size=50, scan_count=100)
    first = asyncio.create_task(run_job_once(settings, "usage", {"date": "2025-11-01"}))
    await query_until(usage_db, "SELECT count(*) FROM batch_runs WHERE status = 'running' AND records > 0",
                      interval=0.01)
    second = asyncio.create_task(run_job_once(settings, "usage", {"date": "2025-11-01"}))

    async def both_done_with_one_running_at_most() -> bool:
        assert await usage_db.fetchval("SELECT count(*) FROM batch_runs WHERE status = 'running'") <= 1
        return first.done() and second.done()

    await wait_for(both_done_with_one_running_at_most, 120, what="both runs finished")
    one, two = first.result(), second.result()
    assert one["status"] == two["status"] == "succeeded"
    runs = await usage_db.fetch("SELECT id, started_at, finished_at FROM batch_runs ORDER BY id")
    assert len(runs) == 2 and runs[1]["started_at"] >= runs[0]["finished_at"]
    assert await usage_db.fetchval("SELECT count(*) FROM merchant_usage") == 20_000


async def test_cursor_moves_through_keys_of_other_dates(usage_redis: redis.Redis, redis_url: str) -> None:
    """With no wanted key for a long stretch, a page still closes every MAX_SCANS_PER_PAGE SCAN calls, so
    the committed cursor keeps moving (a resumed run does not rescan that stretch)."""
    import redis.asyncio

    pipe = usage_redis.pipeline(transaction=False)
    for n in range(2000):
        pipe.set(f"usage:m{n}:2025-10-01:queries", n)
    pipe.execute()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        reader = UsageReader(client, [DATES[0]], scan_count=5)
        pages = [page async for page in reader.pages()]
    finally:
        await client.aclose()
    assert len(pages) >= 2000 // 5 // MAX_SCANS_PER_PAGE
    assert all(not p.records and not p.rejected for p in pages) and pages[-1].cursor == 0
    assert all(p.cursor != 0 for p in pages[:-1])
