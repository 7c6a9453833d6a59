"""The ``gsc`` handler against the fake Search Console and token server, real PostgreSQL and Redis.

Whole foreground runs go through the real runner (``batcher.testing.run_job_once``) with the fake
(``batcher.fakes.gsc``) on this test's event loop; the tests check ``gsc_search_analytics`` row by row,
the checkpoint, the run record and the fake's request log.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from structlog.testing import capture_logs

from batcher.fakes.gsc import FakeGsc, GscOptions
from batcher.testing import run_job_once, test_settings
from handlers.gsc import INVALID_GRANT, GscParams

SECRET = "cs-" + uuid.uuid4().hex
REFRESH = "rt-" + uuid.uuid4().hex
A, B = "https://a.example/", "sc-domain:b.example"
DIMS = ("date", "query", "page", "country", "device")
COLUMNS = ("site", "search_type", "dimension_set", "date", "query", "page", "country", "device",
           "search_appearance", "clicks", "impressions", "ctr", "position", "data_state")


def options(**changes: Any) -> GscOptions:
    base = GscOptions(sites={A: "siteOwner", B: "siteFullUser"}, client_secret=SECRET, refresh_token=REFRESH,
                      days_with_data=4, lag_days=2, rows_per_day=3)
    return GscOptions(**{**base.__dict__, **changes})


@pytest.fixture
async def gsc_db(db: Any) -> Any:
    await db.execute("TRUNCATE gsc_search_analytics")
    return db


async def run(settings: Any, fake: FakeGsc, **params: Any) -> dict[str, Any]:
    params = {"base_url": fake.url, "token_url": fake.token_url, "client_id": "client-1", "sites": [A, B],
              "initial_days": 10, **params}
    return await run_job_once(settings, "gsc", params,
                              literal_secrets={"client_secret": SECRET, "refresh_token": REFRESH})


def expected(fake: FakeGsc, sites: list[str], days: list[dt.date]) -> set[tuple[Any, ...]]:
    """The rows the table must hold: every served row of those sites and days, as the handler maps it."""
    out = set()
    for site in sites:
        for day in days:
            for r in fake.rows(site, day)[:fake.options.row_cap]:
                out.add((site, "web", ",".join(DIMS), day, r["query"], r["page"], r["country"], r["device"],
                         None, round(r["clicks"]), round(r["impressions"]), r["ctr"], r["position"], "final"))
    return out


async def table(pool: Any) -> set[tuple[Any, ...]]:
    rows = await pool.fetch(f"SELECT {', '.join(COLUMNS)} FROM gsc_search_analytics")
    result = {tuple(r) for r in rows}
    assert len(result) == len(rows)
    return result


async def checkpoint(pool: Any) -> Any:
    return await pool.fetchval("SELECT cursor FROM checkpoints WHERE job_name = 'gsc' AND scope_key = ''")


async def test_multi_day_multi_site_run_writes_exact_rows(gsc_db: Any, database_url: str, redis_url: str) -> None:
    """Two sites, four days with data and one day without: the table holds exactly the served rows, the
    checkpoint names each site's newest day, and only days with data were queried (plus one probe each)."""
    async with FakeGsc(options(empty_days=(3,))) as fake:
        summary = await run(test_settings(database_url, redis_url), fake)
        days = fake.data_days()
        assert summary["status"] == "succeeded", summary
        assert await table(gsc_db) == expected(fake, [A, B], days)
        assert summary["records"] == len(expected(fake, [A, B], days)) == 2 * 3 * 3
        assert await checkpoint(gsc_db) == {"sites": {A: days[-1].isoformat(), B: days[-1].isoformat()}}
        queries = [e for e in fake.log if e["kind"] == "query"]
        probes = [e for e in queries if e["body"]["dimensions"] == ["date"]]
        assert len(probes) == 2 and len(queries) == 2 + 2 * len(days)
        assert {e["body"]["rowLimit"] for e in queries} == {25_000}
        assert fake.token_requests == 1


async def test_reread_day_replaces_changed_and_vanished_rows(gsc_db: Any, database_url: str,
                                                             redis_url: str) -> None:
    """A second run re-reads the refresh window: a day whose upstream rows changed (one row's metrics,
    one row gone) holds exactly the new rows afterwards — no duplicates, no leftover — and older days
    outside the window are neither queried nor touched."""
    settings = test_settings(database_url, redis_url)
    async with FakeGsc(options()) as fake:
        assert (await run(settings, fake, sites=[A]))["status"] == "succeeded"
        days = fake.data_days()
        newest = days[-1]
        changed = [dict(r) for r in fake.rows(A, newest)[:2]]
        changed[0]["clicks"], changed[0]["impressions"] = 999.0, 5000.0
        fake.set_day(A, newest, changed)
        fake.log.clear()
        summary = await run(settings, fake, sites=[A], refresh_days=2)
        assert summary["status"] == "succeeded", summary
        assert await table(gsc_db) == expected(fake, [A], days)
        day_rows = await gsc_db.fetch("SELECT clicks FROM gsc_search_analytics WHERE date = $1", newest)
        assert sorted(r["clicks"] for r in day_rows) == sorted([999, round(changed[1]["clicks"])])
        queried = {e["body"]["startDate"] for e in fake.log if e["body"]["dimensions"] != ["date"]}
        assert queried == {d.isoformat() for d in days[-2:]}


async def test_a_day_without_rows_replaces_the_day_with_nothing(gsc_db: Any, database_url: str,
                                                                 redis_url: str) -> None:
    """A day that had rows and now has no data (the API answers without a ``rows`` key) is emptied."""
    settings = test_settings(database_url, redis_url)
    async with FakeGsc(options()) as fake:
        await run(settings, fake, sites=[A])
        days = fake.data_days()
        fake.set_day(A, days[-2], [])
        summary = await run(settings, fake, sites=[A], refresh_days=3)
        assert summary["status"] == "succeeded", summary
        assert await gsc_db.fetchval("SELECT count(*) FROM gsc_search_analytics WHERE date = $1", days[-2]) == 0
        assert await table(gsc_db) == expected(fake, [A], days)


async def test_paging_until_a_short_page_and_the_daily_row_cap(gsc_db: Any, database_url: str,
                                                               redis_url: str) -> None:
    """Pages of ``row_limit`` rows are read with a growing ``startRow`` until a short (here: empty, no
    ``rows`` key) page; a day that reaches the row cap stops there and is noted in the run's result."""
    settings = test_settings(database_url, redis_url)
    async with FakeGsc(options(days_with_data=2, rows_per_day=8)) as fake:
        summary = await run(settings, fake, sites=[A], row_limit=4)
        assert summary["status"] == "succeeded", summary
        starts = sorted((e["body"]["startDate"], e["body"]["startRow"]) for e in fake.log
                        if e["body"]["dimensions"] != ["date"])
        assert [s for _, s in starts] == [0, 4, 8, 0, 4, 8]
        assert await table(gsc_db) == expected(fake, [A], fake.data_days())
        result = await gsc_db.fetchval("SELECT result FROM batch_runs WHERE id = $1", summary["run_id"])
        assert result is None or "row_cap_days" not in result

        await gsc_db.execute("TRUNCATE gsc_search_analytics, checkpoints")
        fake.configure(row_cap=6, rows_per_day=10)
        fake.log.clear()
        summary = await run(settings, fake, sites=[A], row_limit=4, row_cap=6)
        assert summary["status"] == "succeeded", summary
        starts = sorted((e["body"]["startDate"], e["body"]["startRow"]) for e in fake.log
                        if e["body"]["dimensions"] != ["date"])
        assert [s for _, s in starts] == [0, 4, 0, 4]
        assert await table(gsc_db) == expected(fake, [A], fake.data_days())
        result = await gsc_db.fetchval("SELECT result FROM batch_runs WHERE id = $1", summary["run_id"])
        assert result["row_cap"] == 6
        assert result["row_cap_days"] == [{"site": A, "date": d.isoformat(), "rows": 6} for d in fake.data_days()]


async def test_429_403_quota_and_5xx_are_retried_to_the_same_rows(gsc_db: Any, database_url: str,
                                                                  redis_url: str) -> None:
    """429s, Google's 403 ``rateLimitExceeded``/``quotaExceeded`` (rate limits, not permission errors)
    and 500/503 answers are retried; the run ends with exactly the served rows. A ``quotaExceeded``
    pauses the namespace for its ``quota_pause_ms`` (15 minutes shipped; 0.3 s here), the others 1 s."""
    limits = {"gsc:searchanalytics:": {"interval_ms": 60_000, "max_in_interval": 1200, "quota_pause_ms": 300}}
    async with FakeGsc(options(days_with_data=4, rate_limit_every=2, error_every=5)) as fake:
        with capture_logs() as logs:
            summary = await run(test_settings(database_url, redis_url, rate_limits=limits), fake, sites=[A])
        assert summary["status"] == "succeeded", summary
        statuses = [e.get("status") for e in fake.log if e["kind"] == "query"]
        assert {429, 403} <= set(statuses) and {500, 503} & set(statuses), statuses
        assert await table(gsc_db) == expected(fake, [A], fake.data_days())
    pauses = {e["pause_s"] for e in logs if e["event"] == "http_rate_limited" and e["status"] == 403}
    assert pauses == {0.3, 1.0}


async def test_access_token_expiring_mid_run_is_refreshed_exactly_once(gsc_db: Any, database_url: str,
                                                                       redis_url: str) -> None:
    """The access token stops working after 3 API calls: the 4th gets a 401, the client refreshes once
    and retries; the run needs two token grants in all and writes every row."""
    async with FakeGsc(options(days_with_data=4, token_ttl_requests=3)) as fake:
        summary = await run(test_settings(database_url, redis_url), fake, sites=[A])
        assert summary["status"] == "succeeded", summary
        assert fake.token_requests == 2
        assert [e.get("status") for e in fake.log].count(401) == 1
        assert await table(gsc_db) == expected(fake, [A], fake.data_days())


async def test_sites_all_skips_unverified_sites(gsc_db: Any, database_url: str, redis_url: str) -> None:
    """``sites = "all"`` reads the sites list and skips ``siteUnverifiedUser`` entries."""
    sites = {A: "siteOwner", B: "siteRestrictedUser", "https://c.example/": "siteUnverifiedUser"}
    async with FakeGsc(options(sites=sites, days_with_data=2)) as fake:
        summary = await run(test_settings(database_url, redis_url), fake, sites="all")
        assert summary["status"] == "succeeded", summary
        assert await table(gsc_db) == expected(fake, [A, B], fake.data_days())
        assert {e["site"] for e in fake.log if e["kind"] == "query"} == {A, B}


async def test_invalid_grant_fails_the_run_with_the_message_and_no_secret_anywhere(
        gsc_db: Any, database_url: str, redis_url: str) -> None:
    """A revoked refresh token (400 invalid_grant) fails the run at once (no retry) with the handler's
    message; neither the client secret nor the refresh token appears in batch_runs, run_logs, the summary
    or any log entry."""
    async with FakeGsc(options(revoked=True)) as fake:
        with capture_logs() as logs:
            summary = await run(test_settings(database_url, redis_url), fake)
    assert summary["status"] == "failed" and not summary["retry_queued"], summary
    assert summary["errors"] == [INVALID_GRANT]
    runs = await gsc_db.fetch("SELECT row_to_json(r)::text AS t FROM batch_runs r")
    run_logs = await gsc_db.fetch("SELECT row_to_json(l)::text AS t FROM run_logs l")
    texts = [r["t"] for r in runs] + [r["t"] for r in run_logs] + [repr(summary), repr(logs)]
    assert any(INVALID_GRANT in t for t in texts[:len(runs)])
    for secret in (SECRET, REFRESH):
        assert not [t for t in texts if secret in t]
    assert await gsc_db.fetchval("SELECT count(*) FROM gsc_search_analytics") == 0


def test_params_accept_one_site_and_reject_half_windows() -> None:
    """A single site string is a list of one; ``start`` without ``end``, unknown dimensions and
    ``data_state = "all"`` without a refresh window are refused."""
    base = {"client_id": "c", "client_secret": "s", "refresh_token": "r"}
    assert GscParams(**base, sites=A).sites == [A]
    assert GscParams(**base, sites="all").sites == "all"
    with pytest.raises(ValueError, match="go together"):
        GscParams(**base, sites=A, start=dt.date(2026, 1, 1))
    with pytest.raises(ValueError, match="dimensions"):
        GscParams(**base, sites=A, dimensions=("date", "browser"))
    with pytest.raises(ValueError, match="refresh_days must be at least 1"):
        GscParams(**base, sites=A, data_state="all", refresh_days=0)


async def test_backfill_window_does_not_move_the_incremental_checkpoint(
        gsc_db: Any, database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A configured job (secrets as ``*_env`` references) runs incrementally, then ``batcher backfill``
    queues a window of one older day; run by a worker, the backfill writes exactly that day's rows and
    the job's incremental checkpoint is the same as before."""
    from batcher.commands import queue_backfill
    from batcher.runner import RunExecution
    from batcher.store import Q
    from batcher.testing import test_services
    from tests.inprocess import running_worker

    monkeypatch.setenv("GSC_TEST_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("GSC_TEST_REFRESH_TOKEN", REFRESH)
    async with FakeGsc(options(days_with_data=10)) as fake:
        job = {"type": "gsc", "interval_minutes": 60, "params": {
            "base_url": fake.url, "token_url": fake.token_url, "client_id": "client-1", "sites": [A],
            "initial_days": 4, "client_secret_env": "GSC_TEST_CLIENT_SECRET",
            "refresh_token_env": "GSC_TEST_REFRESH_TOKEN"}}
        settings = test_settings(database_url, redis_url, jobs={"gsc-job": job})
        assert (await run_job_once(settings, "gsc-job"))["status"] == "succeeded"
        before = await gsc_db.fetchval("SELECT cursor FROM checkpoints WHERE job_name = 'gsc-job'")
        days = fake.data_days()
        assert before == {"sites": {A: days[-1].isoformat()}}
        old = days[0]
        assert not await gsc_db.fetchval("SELECT count(*) FROM gsc_search_analytics WHERE date = $1", old)
        async with test_services(settings, http=True) as svc:
            assert len(await queue_backfill(svc.pool, svc.registry, "gsc-job", old, old)) == 1
            async with running_worker(svc, lease_seconds=10) as worker:
                run = dict((await svc.pool.fetch(Q["claim_runs"], worker.worker_id, 1, 10.0, None, 1.0))[0])
                summary = await RunExecution(svc, run, lease_seconds=10).execute()
        assert summary["status"] == "succeeded", summary
        assert summary["records"] == 3
        cursors = await gsc_db.fetch("SELECT cursor FROM checkpoints WHERE job_name = 'gsc-job'")
        assert [r["cursor"] for r in cursors] == [before]
        rows = await table(gsc_db)
        assert {r for r in rows if r[3] == old} == expected(fake, [A], [old])


async def test_a_window_run_reads_its_days_and_moves_no_checkpoint(gsc_db: Any, database_url: str,
                                                                  redis_url: str) -> None:
    """``start``/``end`` on an ordinary run (not a backfill chain) read exactly those days (no probe
    beyond them) and leave the incremental checkpoint as it was."""
    settings = test_settings(database_url, redis_url)
    async with FakeGsc(options(days_with_data=10)) as fake:
        await run(settings, fake, sites=[A], initial_days=3)
        before = await checkpoint(gsc_db)
        days = fake.data_days()
        fake.log.clear()
        summary = await run(settings, fake, sites=[A], start=days[0].isoformat(), end=days[1].isoformat())
        assert summary["status"] == "succeeded", summary
        assert await checkpoint(gsc_db) == before
        assert {r for r in await table(gsc_db) if r[3] <= days[1]} == expected(fake, [A], days[:2])
        assert {e["body"]["endDate"] for e in fake.log} <= {days[0].isoformat(), days[1].isoformat()}
