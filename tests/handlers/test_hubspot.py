"""The ``hubspot`` handler against the fake HubSpot API (``batcher.fakes.hubspot``), real PostgreSQL and Redis.

Whole foreground runs go through the real runner (``batcher.testing.run_job_once``); the results are read
from ``hubspot_objects``/``hubspot_events``, the run summary and the fake's request log.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from batcher.fakes.hubspot import SEARCH_CAP, FakeHubSpot, FakeOptions
from batcher.testing import run_job_once, test_settings
from handlers.hubspot_api import REFRESH_REFUSED, daily_reset

TOKEN = "pat-test-token"
FAST = {"interval_ms": 1000, "max_in_interval": 1_000_000}
LONG_AGO = 400 * 86_400  # settle_seconds putting the first run's search cursor before the fake's timeline


@pytest.fixture
async def hubspot_db(db: Any) -> Any:
    await db.execute("TRUNCATE hubspot_objects, hubspot_events")
    return db


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Any:
    return test_settings(database_url, redis_url, rate_limits={"hubspot:api:": FAST, "hubspot:search:": FAST})


async def run(settings: Any, fake: FakeHubSpot, token: str = TOKEN, **params: Any) -> dict[str, Any]:
    params = {"base_url": fake.url, "objects": ["contacts"], "settle_seconds": 0, "pause_seconds": 0.05,
              "search_pause_seconds": 0.05, **params}
    return await run_job_once(settings, "hubspot", params, literal_secrets={"access_token": token})


async def stored(pool: Any, object_type: str = "contacts") -> dict[str, Any]:
    rows = await pool.fetch("SELECT id, properties, archived FROM hubspot_objects WHERE object_type = $1",
                            object_type)
    return {r["id"]: r for r in rows}


async def items_updated(pool: Any, summary: dict[str, Any]) -> int:
    return int(await pool.fetchval("SELECT items_updated FROM batch_runs WHERE id = $1", summary["run_id"]))


def searches(fake: FakeHubSpot) -> list[dict[str, Any]]:
    return [e for e in fake.log if e.get("kind") == "search"]


def now_after(ms: int) -> int:
    """Poll until the wall clock has passed ``ms`` (a touch must land strictly before the next run)."""
    deadline = time.monotonic() + 1
    while int(time.time() * 1000) <= ms:
        assert time.monotonic() < deadline
    return int(time.time() * 1000)


async def first_run_empty(settings: Any, fake: FakeHubSpot, **params: Any) -> None:
    """A first run while the fake has no contacts: it lists nothing and leaves the search cursor
    ``LONG_AGO``, before the fake's timeline — so the next run searches every record added since."""
    summary = await run(settings, fake, settle_seconds=LONG_AGO, **params)
    assert summary["status"] == "succeeded" and summary["records"] == 0, summary


async def test_incremental_sync_of_25000_records_reads_each_exactly_once(hubspot_db: Any, settings: Any) -> None:
    """25,000 contacts (1,200 of them sharing one modification time, so ties straddle page boundaries) are
    read by search exactly once each: records = 25,000, every row stored, no search ever sends ``after``
    or meets the 10,000-result cap, and the calls stay within 1 % of the minimum (25,000 ÷ 200)."""
    async with FakeHubSpot(FakeOptions(records={"contacts": 0}, tie_start=3_000, tie_block=1_200)) as fake:
        await first_run_empty(settings, fake)
        fake.add("contacts", 25_000)
        fake.log.clear()
        summary = await run(settings, fake)
    assert summary["status"] == "succeeded", summary
    assert summary["records"] == 25_000 == await items_updated(hubspot_db, summary)
    assert len(await stored(hubspot_db)) == 25_000
    calls = searches(fake)
    assert calls and all(e["status"] == 200 and e["offset"] == 0 for e in calls)
    assert len(calls) <= 25_000 / 200 * 1.01 + 8, len(calls)


async def test_more_than_10000_records_sharing_one_timestamp_terminate(hubspot_db: Any, settings: Any) -> None:
    """10,500 records with one identical modification time (more than one search may return) are read
    by id, each exactly once, and the run ends."""
    async with FakeHubSpot(FakeOptions(records={"contacts": 0}, tie_start=1, tie_block=10_500)) as fake:
        await first_run_empty(settings, fake)
        fake.add("contacts", 10_600)
        summary = await run(settings, fake)
    assert summary["status"] == "succeeded", summary
    assert summary["records"] == 10_600 and len(await stored(hubspot_db)) == 10_600
    assert all(e["status"] == 200 for e in searches(fake))


async def test_second_run_reads_only_changed_records(hubspot_db: Any, settings: Any) -> None:
    """After a full sync, 200 records are modified: the next run reads those 200 only and counts them in
    ``items_updated``; a window run re-reading all 2,000 unchanged records counts none (update_if_changed
    tells the pipeline what changed) and leaves the incremental cursor alone."""
    async with FakeHubSpot(FakeOptions(records={"contacts": 0})) as fake:
        await first_run_empty(settings, fake)
        fake.add("contacts", 2_000)
        assert (await run(settings, fake))["records"] == 2_000
        window = await run(settings, fake, start="2026-01-01", end="2026-01-01")
        assert (window["records"], await items_updated(hubspot_db, window)) == (2_000, 0), window
        at = now_after(int(time.time() * 1000))
        fake.touch("contacts", list(range(1, 201)), at_ms=at)
        now_after(at)
        summary = await run(settings, fake)
        again = await run(settings, fake)
    assert summary["status"] == "succeeded", summary
    assert (summary["records"], await items_updated(hubspot_db, summary)) == (200, 200)
    assert (again["records"], await items_updated(hubspot_db, again)) == (0, 0)
    rows = await stored(hubspot_db)
    assert rows["5"]["properties"]["name"].startswith("name-5-changed-at-")


async def test_first_run_lists_with_property_chunks_custom_objects_and_archived(hubspot_db: Any,
                                                                                 settings: Any) -> None:
    """The first run pages the list endpoint (no search cap), asks ``properties`` in chunks that keep each
    URL under the fake's limit (the rest through ``batch/read``), finds custom objects from the schemas
    endpoint, and marks archived records ``archived``."""
    options = FakeOptions(records={"contacts": 450, "companies": 120}, custom_objects={"cars": 130},
                          extra_properties=120, max_url_chars=3_000)
    async with FakeHubSpot(options) as fake:
        fake.archive("contacts", [7, 8, 9])
        summary = await run(settings, fake, objects=["contacts", "companies"], custom_objects=True)
    assert summary["status"] == "succeeded", summary
    assert all(e["status"] == 200 for e in fake.log), [e for e in fake.log if e["status"] != 200][:3]
    kinds = {e.get("kind") for e in fake.log}
    assert {"list", "batch_read", "schemas", "archived", "properties"} <= kinds and "search" not in kinds
    contacts = await stored(hubspot_db)
    assert len(contacts) == 450
    extra = "custom_property_with_a_rather_long_internal_name_119"
    assert contacts["1"]["properties"][extra] == "x119-1" and contacts["1"]["archived"] is False
    assert all(contacts[i]["archived"] for i in ("7", "8", "9"))
    assert len(await stored(hubspot_db, "companies")) == 120 and len(await stored(hubspot_db, "cars")) == 130


async def test_daily_429_ends_the_run_resumable_with_the_reset_time(hubspot_db: Any, settings: Any) -> None:
    """A 429 with ``policyName: DAILY`` fails the run at once (one 429, no retry loop) with a message naming
    the reset time; what was committed stays, and the next run continues and reads the rest once."""
    async with FakeHubSpot(FakeOptions(records={"contacts": 0})) as fake:
        await first_run_empty(settings, fake)
        fake.add("contacts", 3_000)
        fake.configure(daily_limit=len(fake.log) + 6)
        failed = await run(settings, fake)
        assert failed["status"] == "failed", failed
        message = " ".join(failed["errors"])
        assert "daily API limit" in message and "resets at" in message and "T00:00:00+00:00" in message
        assert [e["status"] for e in fake.log].count(429) == 1
        kept = len(await stored(hubspot_db))
        assert 0 < kept < 3_000
        fake.configure(daily_limit=0)
        summary = await run(settings, fake)
    assert summary["status"] == "succeeded", summary
    assert len(await stored(hubspot_db)) == 3_000
    assert summary["records"] + kept <= 3_000 + 200  # resumed from the checkpoint, not from the start


async def test_ten_secondly_429s_and_5xx_are_waited_out(hubspot_db: Any, settings: Any) -> None:
    """429 ``TEN_SECONDLY_ROLLING`` pauses then retries (search 429s carry no Retry-After); 502/503 are
    retried with backoff; every record still lands once."""
    async with FakeHubSpot(FakeOptions(records={"contacts": 0})) as fake:
        await first_run_empty(settings, fake)
        fake.add("contacts", 2_000)
        fake.configure(rate_limit_every=4, error_every=7)
        summary = await run(settings, fake)
    assert summary["status"] == "succeeded", summary
    assert summary["records"] == 2_000 and len(await stored(hubspot_db)) == 2_000
    statuses = [e["status"] for e in fake.log]
    assert 429 in statuses and {502, 503} & set(statuses)


async def test_revoked_token_fails_permanently_with_no_secret_anywhere(hubspot_db: Any, settings: Any,
                                                                       capfd: Any) -> None:
    """A revoked token (401) fails the run at once with a clear message; the token is in no run row, run
    log, job row or log line."""
    secret = "pat-na1-0123456789abcdef-revoked"
    async with FakeHubSpot(FakeOptions(access_token=secret, revoked=True)) as fake:
        summary = await run(settings, fake, token=secret)
    assert summary["status"] == "failed" and summary["reason"] == "permanent_error", summary
    assert "HubSpot rejected the access token (401)" in " ".join(summary["errors"])
    assert len(fake.log) == 1
    rows = await hubspot_db.fetch("SELECT r::text FROM batch_runs r UNION ALL SELECT l::text FROM run_logs l "
                                  "UNION ALL SELECT c::text FROM batch_config c")
    assert rows and not any(secret in r[0] for r in rows)
    out, err = capfd.readouterr()
    assert secret not in out + err and secret not in str(summary)


async def test_oauth_refresh_credentials_fetch_one_token_for_the_run(hubspot_db: Any, settings: Any) -> None:
    """With OAuth2 refresh credentials instead of a private-app token, the run gets its bearer token from
    the token endpoint (one refresh for the whole run) and syncs as with a token."""
    async with FakeHubSpot(FakeOptions(records={"contacts": 300})) as fake:
        params = {"base_url": fake.url, "token_url": fake.url + "/oauth/v1/token", "client_id": "hubspot-app",
                  "objects": ["contacts"]}
        summary = await run_job_once(settings, "hubspot", params, literal_secrets={
            "client_secret": "hubspot-app-secret", "refresh_token": "hubspot-refresh-token"})
        assert summary["status"] == "succeeded", summary
        assert fake.token_requests == 1
    assert len(await stored(hubspot_db)) == 300


async def test_revoked_refresh_token_fails_permanently_with_no_secret(hubspot_db: Any, settings: Any,
                                                                      capfd: Any) -> None:
    """A refresh token HubSpot refuses (400 BAD_REFRESH_TOKEN) fails the run at once with a message saying
    what to do; neither the refresh token nor the client secret appears in any run row, log row or line."""
    refresh, client_secret = "hs-refresh-0123456789-revoked", "hs-client-secret-abcdef"
    async with FakeHubSpot(FakeOptions(refresh_token=refresh, client_secret=client_secret,
                                       refresh_revoked=True)) as fake:
        params = {"base_url": fake.url, "token_url": fake.url + "/oauth/v1/token", "client_id": "hubspot-app",
                  "objects": ["contacts"]}
        summary = await run_job_once(settings, "hubspot", params, literal_secrets={
            "client_secret": client_secret, "refresh_token": refresh})
    assert summary["status"] == "failed" and summary["reason"] == "permanent_error", summary
    assert REFRESH_REFUSED in " ".join(summary["errors"])
    rows = await hubspot_db.fetch("SELECT r::text FROM batch_runs r UNION ALL SELECT l::text FROM run_logs l")
    out, err = capfd.readouterr()
    for secret in (refresh, client_secret):
        assert not any(secret in r[0] for r in rows) and secret not in out + err + str(summary)


async def test_events_sync_by_occurrence_time(hubspot_db: Any, settings: Any) -> None:
    """Event occurrences are read with ``occurredAfter`` + ``after`` paging; a second run reads only the
    occurrences after the checkpoint."""
    async with FakeHubSpot(FakeOptions(records={"contacts": 0}, events={"e_visited_page": 450})) as fake:
        first = await run(settings, fake, objects=[], events=["e_visited_page"])
        assert first["status"] == "succeeded" and first["records"] == 450, first
        occurrences = fake.events["e_visited_page"]
        occurrences.append({**occurrences[-1], "id": "late-1"})  # same time as the last one read
        second = await run(settings, fake, objects=[], events=["e_visited_page"])
    assert second["status"] == "succeeded" and second["records"] == 1, second
    assert await hubspot_db.fetchval("SELECT count(*) FROM hubspot_events") == 451


async def test_fake_search_reproduces_hubspots_limits() -> None:
    """The fake answers 400 past the 10,000th result, to two sorts and to six filter groups, as HubSpot
    does; the first 10,000 results are served."""
    import aiohttp

    async with FakeHubSpot(FakeOptions(records={"contacts": 10_500})) as fake, aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        url = f"{fake.url}/crm/v3/objects/contacts/search"
        sort = [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}]

        async def status(**body: Any) -> int:
            async with http.post(url, json={"limit": 200, "sorts": sort, **body}) as response:
                return response.status

        assert await status(after=str(SEARCH_CAP - 200)) == 200
        assert await status(after=str(SEARCH_CAP)) == 400
        assert await status(sorts=sort * 2) == 400
        assert await status(filterGroups=[{"filters": []}] * 6) == 400


async def test_event_window_run_leaves_the_incremental_cursor(hubspot_db: Any, settings: Any) -> None:
    """A run with ``start``/``end`` reads the window's occurrences only and does not move the events cursor."""
    async with FakeHubSpot(FakeOptions(records={"contacts": 0}, events={"e_visited_page": 200})) as fake:
        window = await run(settings, fake, objects=[], events=["e_visited_page"], start="2026-01-01",
                           end="2026-01-01")
        assert window["status"] == "succeeded" and window["records"] == 200, window
        cursor = await hubspot_db.fetchval("SELECT cursor FROM checkpoints WHERE stream = 'events'")
        assert cursor == {}


async def test_archived_scan_runs_every_archived_every_hours(hubspot_db: Any, settings: Any) -> None:
    """The archived listing runs on the first run, not again within ``archived_every_hours`` (24 by
    default), and on every run with 0; a record archived meanwhile is then marked."""
    async with FakeHubSpot(FakeOptions(records={"contacts": 50})) as fake:
        assert (await run(settings, fake))["status"] == "succeeded"
        fake.archive("contacts", [3])
        fake.log.clear()
        assert (await run(settings, fake))["status"] == "succeeded"
        assert not [e for e in fake.log if e.get("kind") == "archived"]
        assert (await run(settings, fake, archived_every_hours=0))["status"] == "succeeded"
        assert [e for e in fake.log if e.get("kind") == "archived"]
    assert (await stored(hubspot_db))["3"]["archived"] is True


def test_daily_reset_is_the_next_midnight_in_the_account_time_zone() -> None:
    """HubSpot's daily quota resets at midnight in the account's time zone (UTC unless configured)."""
    now = datetime(2026, 12, 4, 7, 30, tzinfo=UTC)
    assert daily_reset(now, "UTC").isoformat() == "2026-12-05T00:00:00+00:00"
    assert daily_reset(now, "America/New_York").isoformat() == "2026-12-05T00:00:00-05:00"
    assert daily_reset(now, "Asia/Tokyo").isoformat() == "2026-12-05T00:00:00+09:00"
