"""The ``datasync`` handler against the fake DataSync API, real PostgreSQL and Redis.

Envelope and event rules are checked as pure functions; the rest runs whole foreground runs through the
real runner (``batcher.testing.run_job_once``) with the fake server (``batcher.fakes.datasync``) on this
test's event loop, and checks the ``events`` and ``dead_letters`` tables, the run summary and the fake's
request log.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from batcher.app import open_services
from batcher.fakes.datasync import INVALID_KINDS, FakeDataSync, FakeOptions, make_event
from batcher.testing import run_job_once, test_settings
from handlers.datasync import (
    PAGES_AHEAD,
    DataSyncHandler,
    DataSyncParams,
    Page,
    build_batch,
    event_record,
    page_chain,
    parse_body,
    parse_page,
    parse_raw_event,
    parse_timestamp,
    validate_events,
)

KEY = "test-key"


@pytest.fixture
async def events_db(db: Any) -> Any:
    """The core tables and ``events`` emptied."""
    await db.execute("TRUNCATE events")
    return db


async def run(settings: Any, fake: FakeDataSync, **params: Any) -> dict[str, Any]:
    params = {"base_url": fake.url, "batch_size": 500, **params}
    return await run_job_once(settings, "datasync", params, literal_secrets={"api_key": KEY})


async def check_tables(pool: Any, fake: FakeDataSync) -> None:
    """``events`` holds every valid event once, payload equal to what was served; dead letters hold
    every invalid event once."""
    rows = await pool.fetch("SELECT id, type, occurred_at, payload FROM events")
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows) and set(by_id) == fake.valid_ids()
    served = {e["id"]: e for e in fake.events if isinstance(e, dict) and e.get("id") in by_id}
    for event_id, row in by_id.items():
        assert row["payload"] == served[event_id]
        assert row["type"] == served[event_id]["type"]
        assert row["occurred_at"] == parse_timestamp(served[event_id]["timestamp"])
    letters = await pool.fetch("SELECT payload, reason, origin FROM dead_letters WHERE job_name = 'datasync'")
    payloads = sorted((json.loads(r["payload"]) for r in letters), key=repr)
    assert payloads == sorted(fake.invalid_events(), key=repr)
    assert {r["origin"] for r in letters} <= {"handler"}


# ------------------------------------------------------------------------------------ pure rules


def test_both_envelope_shapes_and_the_nested_one_wins() -> None:
    """Nested and flat envelopes parse; when both are present the nested ``pagination`` decides."""
    nested = parse_page({"data": [1], "pagination": {"hasMore": True, "nextCursor": "c2"}})
    assert (nested.events, nested.has_more, nested.next_cursor) == ([1], True, "c2")
    flat = parse_page({"data": [], "hasMore": False, "nextCursor": None})
    assert (flat.has_more, flat.next_cursor) == (False, None)
    both = parse_page({"data": [], "pagination": {"hasMore": True, "nextCursor": "n"}, "hasMore": False})
    assert (both.has_more, both.next_cursor) == (True, "n")


@pytest.mark.parametrize(("body", "message"), [
    ({"data": [], "pagination": {"hasMore": True}}, "pagination.nextCursor missing while hasMore=true"),
    ({"data": [], "hasMore": True, "nextCursor": None}, "nextCursor missing while hasMore=true"),
    ({"data": [], "pagination": {"nextCursor": "x"}}, "pagination.hasMore missing"),
    ({"data": {}, "hasMore": False}, "data: Input should be a valid list"),
    ({"pagination": {"hasMore": False}}, "data missing"),
    ({"data": []}, "neither pagination nor hasMore in the response (keys: data)"),
    ([1, 2], "the response is not a JSON object (got an array)"),
    ({"data": [], "pagination": {"hasMore": "yes", "nextCursor": None}}, "pagination.hasMore: Input should"),
])
def test_invalid_envelopes_name_what_is_wrong(body: Any, message: str) -> None:
    """Every invalid envelope raises ValueError (retried by the HTTP client) naming the problem."""
    with pytest.raises(ValueError) as caught:
        parse_page(body)
    assert str(caught.value).startswith(message)


def test_every_invalid_event_kind_is_rejected_with_a_reason() -> None:
    """Each kind the fake serves is rejected with its own reason; the raw event is kept as received."""
    expected = {"missing id": "id missing", "bad timestamp": "timestamp is not ISO-8601",
                "missing timestamp": "timestamp missing", "id is a number": "id is a number, not a string",
                "NUL character": "NUL character in properties.label", "type is a number": "type is a number",
                "unpaired surrogate": "unpaired surrogate in properties.label",
                "not an object": "the event is a string, not an object",
                "date without time": "timestamp is not ISO-8601"}
    assert set(expected) == set(INVALID_KINDS)
    events = [make_event(i, invalid_every=1) for i in range(len(INVALID_KINDS))]
    records, rejected = validate_events(events)
    assert records == []
    for kind, reject, raw in zip(INVALID_KINDS, rejected, events, strict=True):
        assert reject.raw is raw
        assert reject.reason.startswith("invalid DataSync event: " + expected[kind]), (kind, reject.reason)


def test_timestamps_without_zone_are_utc_and_other_fields_are_kept() -> None:
    """A naive timestamp is UTC; offsets and ``Z`` are honoured; the payload is the event itself."""
    assert parse_timestamp("2026-01-01T10:00:00") == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert parse_timestamp("2026-01-01T10:00:00Z") == datetime(2026, 1, 1, 10, tzinfo=UTC)
    plus_two = parse_timestamp("2026-01-01 12:00:00.5+02:00")
    assert plus_two == datetime(2026, 1, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert plus_two.utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)
    event = {"id": "e1", "type": "t", "timestamp": "2026-01-01T00:00:00", "x": {"ü": ["😀"]}, "new": 1}
    assert event_record(event) == ("e1", "t", datetime(2026, 1, 1, tzinfo=UTC), event)
    with pytest.raises(ValueError, match="id is empty"):
        event_record({"id": " ", "type": "t", "timestamp": "2026-01-01T00:00:00"})


def test_raw_body_scan_flags_only_pages_that_need_a_deep_check() -> None:
    """The raw page is scanned for escaped NULs and unpaired surrogates; escaped surrogate *pairs*
    (emoji from an ASCII-only server) and plain unicode need no per-event scan. A dead letter's payload
    parses back through ``parse_raw`` (replay) or stays rejected with its reason."""
    def page(text: str) -> bytes:
        return ('{"data":[{"id":"a","type":"t","timestamp":"2026-01-01T00:00:00Z","x":"' + text
                + '"}],"hasMore":false}').encode()

    assert [parse_body(page(t)).suspicious for t in ("ü 😀", "\\ud83d\\ude00", "\\u00e9")] == [False] * 3
    assert all(parse_body(page(t)).suspicious for t in ("\\u0000", "a\\ud800b", "\\udc80", "\\\\u0000"))
    with pytest.raises(ValueError, match="NUL character in x"):
        event_record(parse_body(page("\\u0000")).events[0])
    with pytest.raises(ValueError, match="not JSON"):
        parse_body(b'{"data": [')
    good = {"id": "e", "type": "t", "timestamp": "2026-01-01T00:00:00+00:00", "p": {"ü": 1}}
    assert parse_raw_event(json.dumps(good)) == ("e", "t", datetime(2026, 1, 1, tzinfo=UTC), good)
    with pytest.raises(ValueError, match="id missing"):
        parse_raw_event('{"type": "t", "timestamp": "2026-01-01T00:00:00"}')


async def test_pages_fetched_ahead_are_grouped_and_errors_come_after_them() -> None:
    """While the reader is busy (the database is the bottleneck) the chain fetches up to PAGES_AHEAD
    pages; the reader then takes them as one group, checkpointed after the last; a fetch error reaches
    the reader only after the pages fetched before it."""
    full = asyncio.Event()
    calls: list[str | None] = []

    async def fetch(cursor: str | None) -> Page:
        calls.append(cursor)
        n = int(cursor or 0)
        if len(calls) == PAGES_AHEAD + 1:
            full.set()  # the queue holds PAGES_AHEAD pages; this fetch waits for room
        if n == PAGES_AHEAD + 3:
            raise RuntimeError("boom")
        events = [{"id": f"e{i}", "type": "t", "timestamp": "2026-01-01T00:00:00Z"} for i in (n, n + 1)]
        return Page(events, True, str(n + 1), suspicious=False)

    async with page_chain(fetch, None) as groups:
        await full.wait()
        first = await anext(groups)
        assert [c for c, _ in first] == [None, *(str(n) for n in range(1, PAGES_AHEAD))]
        batch, seen = await build_batch(first, set())
        assert [r[0] for r in batch.records] == [f"e{i}" for i in range(PAGES_AHEAD + 1)]  # overlaps dropped
        assert batch.checkpoint == {"cursor": str(PAGES_AHEAD)} and batch.items_checked == 2 * PAGES_AHEAD
        rest = [c for group in [g async for g in _until_error(groups)] for c, _ in group]
    assert rest == [str(n) for n in range(PAGES_AHEAD, PAGES_AHEAD + 3)]


async def _until_error(groups: Any) -> Any:
    with pytest.raises(RuntimeError, match="boom"):
        async for group in groups:
            yield group


def test_params() -> None:
    """base_url is required and http(s); batch_size is 1..1000 (default 100); path defaults to /events."""
    params = DataSyncParams.model_validate({"base_url": "http://h:1/", "api_key": "k"})
    assert (params.base_url, params.batch_size, params.path) == ("http://h:1", 100, "/events")
    for bad in ({"base_url": "ftp://x", "api_key": "k"}, {"api_key": "k"},
                {"base_url": "http://h", "api_key": "k", "batch_size": 1001},
                {"base_url": "http://h", "api_key": "k", "batch_size": 0},
                {"base_url": "http://h", "api_key": "k", "path": "events"}):
        with pytest.raises(ValueError):
            DataSyncParams.model_validate(bad)
    stream = DataSyncHandler.stream("events")
    assert (stream.scope, stream.conflict, stream.key_columns) == ("job", "ignore", ("id",))


# ------------------------------------------------------------------------------------ whole runs


async def test_runs_with_the_handler_prefetch_depth(events_db: Any, database_url: str, redis_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that sets no prefetch_batches runs with the handler's (0: each batch is built when the runner
    asks for it, from every page fetched by then), not the daemon's default (2)."""
    import batcher.runner

    depths: list[int] = []
    real = batcher.runner.prefetching

    def spy(source: Any, *, depth: int, max_bytes: int) -> Any:
        depths.append(depth)
        return real(source, depth=depth, max_bytes=max_bytes)

    monkeypatch.setattr(batcher.runner, "prefetching", spy)
    async with FakeDataSync(FakeOptions(events=1_200)) as fake:
        summary = await run(test_settings(database_url, redis_url), fake)
    assert summary["status"] == "succeeded" and summary["records"] == 1_200, summary
    assert depths == [DataSyncHandler.prefetch_batches] == [0]


async def test_a_run_cancelled_while_it_waits_for_pages_stops_cleanly_and_resumes_exactly(
        events_db: Any, database_url: str, redis_url: str) -> None:
    """Cancelled while the runner waits for the next batch (pages in flight, prefetch depth 0), the run ends
    ``cancelled`` with what it committed — rows and checkpoint together — and the next run completes
    the stream: every event exactly once."""
    from batcher.runjob import run_foreground
    from batcher.testing import test_config
    from tests.polling import wait_for

    async with FakeDataSync(FakeOptions(events=6_000, invalid_every=50, latency_ms=150)) as fake:
        settings = test_settings(database_url, redis_url)
        config = test_config(settings)
        params = {"base_url": fake.url, "batch_size": 500}
        async with open_services(config, start_embedded=False, sync=True, http=True) as services:
            started: list[Any] = []
            task = asyncio.create_task(run_foreground(
                services, config, "datasync", job_name=None, params=params, literal_secrets={"api_key": KEY},
                wait=True, handle_signals=False, on_start=started.append))

            async def committed() -> bool:
                return bool(await events_db.fetchval("SELECT count(*) FROM events"))

            await wait_for(committed, what="a first batch committed")
            started[0].request_cancel("cancelled by the test")
            summary = await asyncio.wait_for(task, 10)
        assert summary["status"] == "cancelled", summary
        assert 0 < summary["records"] < 5_880 and summary["records"] == await events_db.fetchval(
            "SELECT count(*) FROM events")
        fake.configure(latency_ms=0)
        rest = await run(settings, fake)
        assert rest["status"] == "succeeded", rest
        await check_tables(events_db, fake)


@pytest.mark.parametrize("shape", ["nested", "flat", "both"])
async def test_ingests_20000_events_exactly(events_db: Any, database_url: str, redis_url: str,
                                            shape: str) -> None:
    """20,000 events (1 in 50 invalid, gzip, overlapping pages) in each envelope shape: every valid event
    once with its payload as served, every invalid one dead-lettered once, the summary counts exact."""
    options = FakeOptions(events=20_000, shape=shape, invalid_every=50, overlap=3, gzip=True)  # type: ignore[arg-type]
    async with FakeDataSync(options) as fake:
        summary = await run(test_settings(database_url, redis_url), fake)
        assert summary["status"] == "succeeded", summary
        assert summary["records"] == 19_600 and summary["dead_letters"] == 400
        assert summary["api_calls"] == 40 == len(fake.log)
        assert summary["errors"] == [], "dead letters are not errors (issue 15)"
        assert summary["dead_letter_reasons"][0].startswith("invalid DataSync event: "), summary
        await check_tables(events_db, fake)
        wire = sum(1 for e in fake.log if e["status"] == 200)
        assert wire == 40 and 0 < summary["ingress_bytes"] < sum(len(json.dumps(e)) for e in fake.events)


async def test_second_run_reads_only_new_events_plus_the_last_page(events_db: Any, database_url: str,
                                                                   redis_url: str) -> None:
    """The checkpoint is the cursor of the last page: the next run re-reads that page, then the events
    appended since — never the stream from the start."""
    async with FakeDataSync(FakeOptions(events=1_730, invalid_every=100, overlap=2)) as fake:
        settings = test_settings(database_url, redis_url)
        first = await run(settings, fake)
        assert first["status"] == "succeeded" and first["api_calls"] == 4
        last_cursor = fake.log[-1]["cursor"]
        checkpoint = await events_db.fetchval(
            "SELECT cursor FROM checkpoints WHERE job_name = 'datasync' AND stream = 'events'")
        assert checkpoint == {"cursor": last_cursor}
        fake.append(1_200)
        fake.log.clear()
        second = await run(settings, fake)
        assert second["status"] == "succeeded", second
        assert fake.log[0]["cursor"] == last_cursor and fake.log[0]["first"] == 1_500 - 2
        assert sum(e["served"] for e in fake.log) == (2_930 - 1_498) + 2 * (len(fake.log) - 1)
        # records: the valid events of 1,498..2,929 (re-read page included); dead letters: only new ones
        assert (second["records"], second["dead_letters"]) == (1_432 - 15, 12)
        await check_tables(events_db, fake)
        fake.log.clear()
        third = await run(settings, fake)  # nothing new: one request, nothing written twice
        assert third["status"] == "succeeded" and len(fake.log) == 1
        await check_tables(events_db, fake)


async def test_429_waits_until_the_reset_and_5xx_are_retried(events_db: Any, database_url: str,
                                                             redis_url: str, redis_db: Any) -> None:
    """After each 429 the next request arrives no earlier than the announced reset (both headers, the
    later wins); 502/503 are retried; the data is complete."""
    options = FakeOptions(events=3_000, rate_limit_every=3, rate_limit_delay_s=0.25,
                          rate_limit_headers="reset", error_every=5, invalid_every=70)
    async with FakeDataSync(options) as fake:
        settings = test_settings(database_url, redis_url)
        summary = await run(settings, fake)
        fake.configure(rate_limit_headers="both", rate_limit_delay_s=0.3)
        fake.append(1_000)
        summary2 = await run(settings, fake)
    assert summary["status"] == summary2["status"] == "succeeded", (summary, summary2)
    throttled = [i for i, e in enumerate(fake.log) if e["status"] == 429]
    assert len(throttled) >= 4 and any(e["status"] in (502, 503) for e in fake.log)
    for i in throttled:
        if i + 1 < len(fake.log):
            assert fake.log[i + 1]["t"] >= fake.log[i]["reset_at"], (fake.log[i], fake.log[i + 1])
    assert summary["api_calls"] + summary2["api_calls"] == len(fake.log)
    await check_tables(events_db, fake)


async def test_invalid_envelope_is_retried_then_fails_the_run(events_db: Any, database_url: str,
                                                              redis_url: str) -> None:
    """An occasional invalid envelope is re-fetched within the run; a persistent one fails the run after
    the namespace's attempts, naming the problem, with nothing of that page committed."""
    settings = test_settings(database_url, redis_url,
                             rate_limits={"datasync:events:": {"interval_ms": 1000, "max_in_interval": 1000,
                                                               "max_attempts": 3}})
    async with FakeDataSync(FakeOptions(events=1_000, bad_envelope_every=2)) as fake:
        ok = await run(settings, fake, batch_size=250)
        assert ok["status"] == "succeeded" and ok["records"] == 1_000, ok
        fake.append(600)
        fake.configure(bad_envelope_every=1)
        fake.log.clear()
        failed = await run(settings, fake, batch_size=250)
    assert failed["status"] == "failed", failed
    assert "pagination.nextCursor missing while hasMore=true" in failed["errors"][0]
    assert "after 3 attempts" in failed["errors"][0] and len(fake.log) == 3
    assert await events_db.fetchval("SELECT count(*) FROM events") == 1_000
    checkpoint = await events_db.fetchval("SELECT cursor FROM checkpoints WHERE job_name = 'datasync'")
    assert checkpoint == {"cursor": fake.log[0]["cursor"]}


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_key_fails_at_once_without_the_key(events_db: Any, database_url: str, redis_url: str,
                                                          status: int, capfd: Any) -> None:
    """A wrong key is a permanent failure "DataSync rejected the API key (401)" after one request; the key
    appears nowhere: not in the run row, its logs, its checkpoints, nor the process output."""
    secret = "sk-live-very-secret-4711"
    async with FakeDataSync(FakeOptions(events=10, auth_status=status)) as fake:
        summary = await run_job_once(test_settings(database_url, redis_url), "datasync",
                                     {"base_url": fake.url}, literal_secrets={"api_key": secret})
    assert summary["status"] == "failed" and summary["reason"] == "permanent_error"
    assert summary["errors"] == [f"DataSync rejected the API key ({status})"]
    assert len(fake.log) == 1
    stored = await events_db.fetch("SELECT r::text FROM batch_runs r UNION ALL SELECT l::text FROM run_logs l"
                                   " UNION ALL SELECT c::text FROM batch_config c")
    assert stored and not any(secret in row[0] for row in stored)
    out, err = capfd.readouterr()
    assert secret not in out + err + json.dumps(summary)
