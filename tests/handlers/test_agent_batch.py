"""The ``agent_batch`` handler's nine batch types against the fake processing service (real PostgreSQL,
Redis and the real runner): exact result rows, exact context JSON, validation statistics and retries."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.fakes.agent import AgentOptions, FakeAgent
from batcher.testing import test_settings
from tests.handlers.agent_fixtures import KEY, context, ok, prefer, results, run, seed, users


@pytest.fixture
async def agent_db(db: Any) -> Any:
    await seed(db)
    return db


def progress(n: int, succeeded: int | None = None, failed: int = 0, total: int | None = None) -> dict[str, Any]:
    total = n if total is None else total
    return {"processed": n, "succeeded": n - failed if succeeded is None else succeeded, "failed": failed,
            "total": total, "percentage": round(100.0 * n / total, 1) if total else 100.0}


def metadata(batch_type: str, refs: list[dict[str, str]], **changes: Any) -> dict[str, Any]:
    base = {"batch_type": batch_type, "template": "default", "feature_type": "default", "category_type": None,
            "categories": [], "tenant_id": None, "group": None}
    return {**base, **changes, "user_references": refs}


async def test_individual_users_one_request_per_user_with_invalid_users_filtered(
        agent_db: Any, database_url: str, redis_url: str) -> None:
    """INDIVIDUAL_USERS with explicit users: the inactive and the unknown user are filtered and counted
    (validation 3 valid / 2 invalid), each valid user gets one request and one result row."""
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        summary = await run(test_settings(database_url, redis_url), fake, batch_type="INDIVIDUAL_USERS",
                            users=["u3", "u1", "ghost", "u4", "u2"], template="welcome")
        assert summary["status"] == "succeeded", summary
        run_id = summary["run_id"]
        assert await results(agent_db) == {
            ok("t1", "u1", "user:u1", "welcome", sent_user="u1"),
            ok("t1", "u2", "user:u2", "welcome", sent_user="u2"),
            ok("t2", "u3", "user:u3", "welcome", sent_user="u3")}
        assert dict(fake.ok_counts) == {"user:u1": 1, "user:u2": 1, "user:u3": 1}
        valid = users(("u1", "t1"), ("u2", "t1"), ("u3", "t2"))
        assert await context(agent_db, run_id) == {
            "results": {"metadata": metadata("INDIVIDUAL_USERS", valid, template="welcome", run_id=run_id),
                        "items": {"valid_users": valid, "invalid_users": ["ghost", "u4"], "filtered_items": 0}},
            "validation": {"total": 5, "valid": 3, "invalid": 2},
            "progress": progress(3)}
        bar = await agent_db.fetchval("SELECT progress FROM batch_runs WHERE id = $1", run_id)
        assert (bar["done"], bar["total"]) == (3, 3)  # the run's progress bar (report_progress)


async def run_and_check(db: Any, settings: Any, fake: FakeAgent, params: dict[str, Any],
                        rows: set[tuple[Any, ...]], ctx: dict[str, Any]) -> int:
    summary = await run(settings, fake, **params)
    assert summary["status"] == "succeeded", summary
    run_id = int(summary["run_id"])
    assert await results(db) == rows
    ctx["results"]["metadata"]["run_id"] = run_id
    assert await context(db, run_id) == ctx
    result = await db.fetchval("SELECT result FROM batch_runs WHERE id = $1", run_id)
    assert result["context"] == ctx  # also on the run (GET /api/batch/runs/{id})
    return run_id


async def test_individual_categories_filter_items_of_invalid_users(agent_db: Any, database_url: str,
                                                                   redis_url: str) -> None:
    """INDIVIDUAL_CATEGORIES with a data filter: one request per matching item; the item of an inactive
    user is filtered (counted), the item without an owner is processed with an empty user."""
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        valid = users(("u1", "t1"))
        await run_and_check(agent_db, test_settings(database_url, redis_url), fake,
                            {"batch_type": "INDIVIDUAL_CATEGORIES", "category_type": "article",
                             "filters": {"lang": "en"}},
                            {ok("t1", "u1", "article:a1", "default", sent_user="u1"),
                             ok("", "", "article:a4", "default")},
                            {"results": {"metadata": metadata("INDIVIDUAL_CATEGORIES", valid, category_type="article"),
                                         "items": {"valid_users": valid, "invalid_users": ["u4"],
                                                   "filtered_items": 1}},
                             "validation": {"total": 2, "valid": 1, "invalid": 1}, "progress": progress(2)})
        assert dict(fake.ok_counts) == {"article:a1": 1, "article:a4": 1}


async def test_batch_users_one_request_rows_for_the_distribution(agent_db: Any, database_url: str,
                                                                 redis_url: str) -> None:
    """BATCH_USERS: every active user in one request; the result goes to the valid distribution users
    (one row each); an unknown distribution user is counted invalid."""
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        refs = users(("u1", "t1"))
        valid = users(("u1", "t1"), ("u2", "t1"), ("u3", "t2"))
        await run_and_check(agent_db, test_settings(database_url, redis_url), fake,
                            {"batch_type": "BATCH_USERS", "distribution": ["u1", "ghost"]},
                            {ok("t1", "u1", "batch", "default", {"key": "batch", "items": [1, 2, 3]})},
                            {"results": {"metadata": metadata("BATCH_USERS", refs),
                                         "items": {"valid_users": valid, "invalid_users": ["ghost"],
                                                   "filtered_items": 0}},
                             "validation": {"total": 4, "valid": 3, "invalid": 1}, "progress": progress(3)})
        assert dict(fake.ok_counts) == {"batch": 1}
        assert [len(e["body"]["input"]["items"]) for e in fake.log] == [3]


async def test_batch_categories_one_request_rows_per_owner(agent_db: Any, database_url: str,
                                                           redis_url: str) -> None:
    """BATCH_CATEGORIES: all videos in one request; without a distribution each owner gets a row."""
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        valid = users(("u1", "t1"), ("u3", "t2"))
        out = {"key": "batch", "items": [1, 2]}
        await run_and_check(agent_db, test_settings(database_url, redis_url), fake,
                            {"batch_type": "BATCH_CATEGORIES", "category_type": "video"},
                            {ok("t1", "u1", "batch", "default", out), ok("t2", "u3", "batch", "default", out)},
                            {"results": {"metadata": metadata("BATCH_CATEGORIES", valid, category_type="video"),
                                         "items": {"valid_users": valid, "invalid_users": [], "filtered_items": 0}},
                             "validation": {"total": 2, "valid": 2, "invalid": 0}, "progress": progress(2)})


async def test_combined_one_request_over_several_categories(agent_db: Any, database_url: str,
                                                            redis_url: str) -> None:
    """COMBINED: articles and videos in one structured request (the inactive owner's article filtered);
    each valid owner gets the cross-category result."""
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        valid = users(("u1", "t1"), ("u2", "t1"), ("u3", "t2"))
        out = {"key": "combined", "items": [1, 2, 3, 4, 5]}
        await run_and_check(agent_db, test_settings(database_url, redis_url), fake,
                            {"batch_type": "COMBINED", "categories": ["article", "video"]},
                            {ok("t1", "u1", "combined", "default", out), ok("t1", "u2", "combined", "default", out),
                             ok("t2", "u3", "combined", "default", out)},
                            {"results": {"metadata": metadata("COMBINED", valid, categories=["article", "video"]),
                                         "items": {"valid_users": valid, "invalid_users": ["u4"],
                                                   "filtered_items": 1}},
                             "validation": {"total": 4, "valid": 3, "invalid": 1}, "progress": progress(5)})
        body = fake.log[0]["body"]["input"]
        assert body["categories"] == ["article", "video"]
        assert [i["item_id"] for i in body["items"]] == ["a1", "a2", "a4", "v1", "v2"]


async def prefs(db: Any) -> None:
    """u1 weekly 09:00 with template "brief", u2 daily 09:00, u3 none (defaults: daily 09:00 UTC), the
    inactive u4 and the unknown ghost weekly 09:00."""
    await prefer(db, "u1", "t1", "weekly", "09:00", template="brief")
    await prefer(db, "u2", "t1", "daily", "09:00")
    await prefer(db, "u4", "t1", "weekly", "09:00")
    await prefer(db, "ghost", "t9", "weekly", "09:00")


WEEKLY = {"frequency": "weekly", "time_of_day": "09:00", "timezone": "UTC"}
DAILY = {"frequency": "daily", "time_of_day": "09:00", "timezone": "UTC"}


async def test_preference_individual_users_of_one_group_with_overrides(agent_db: Any, database_url: str,
                                                                       redis_url: str) -> None:
    """PREFERENCE_INDIVIDUAL_USERS for the weekly group: its members are u1, u4 and ghost; only u1 is
    valid and is sent with their template override."""
    await prefs(agent_db)
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        valid = users(("u1", "t1"))
        await run_and_check(agent_db, test_settings(database_url, redis_url), fake,
                            {"batch_type": "PREFERENCE_INDIVIDUAL_USERS", "feature_type": "digest", "group": WEEKLY},
                            {ok("t1", "u1", "user:u1", "brief", sent_user="u1")},
                            {"results": {"metadata": metadata("PREFERENCE_INDIVIDUAL_USERS", valid,
                                                              feature_type="digest", group=WEEKLY),
                                         "items": {"valid_users": valid, "invalid_users": ["ghost", "u4"],
                                                   "filtered_items": 0}},
                             "validation": {"total": 3, "valid": 1, "invalid": 2}, "progress": progress(1)})
        assert fake.log[0]["body"]["template"] == "brief"


async def test_preference_individual_categories_default_preferences_apply(agent_db: Any, database_url: str,
                                                                          redis_url: str) -> None:
    """PREFERENCE_INDIVIDUAL_CATEGORIES for the daily group: u2 (own row) and u3 (no row: the defaults,
    daily 09:00 UTC) are members; their articles are sent one by one."""
    await prefs(agent_db)
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        valid = users(("u2", "t1"), ("u3", "t2"))
        await run_and_check(agent_db, test_settings(database_url, redis_url), fake,
                            {"batch_type": "PREFERENCE_INDIVIDUAL_CATEGORIES", "feature_type": "digest",
                             "category_type": "video", "group": DAILY},
                            {ok("t2", "u3", "video:v2", "default", sent_user="u3")},
                            {"results": {"metadata": metadata("PREFERENCE_INDIVIDUAL_CATEGORIES", valid,
                                                              feature_type="digest", group=DAILY,
                                                              category_type="video"),
                                         "items": {"valid_users": valid, "invalid_users": [], "filtered_items": 0}},
                             "validation": {"total": 2, "valid": 2, "invalid": 0}, "progress": progress(1)})


async def test_preference_batch_users_one_request_per_template(agent_db: Any, database_url: str,
                                                               redis_url: str) -> None:
    """PREFERENCE_BATCH_USERS over every group: the valid users are sent in one request per effective
    template (u1's "brief"; u2 and u3 "default"), each user getting their template's result."""
    await prefs(agent_db)
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        valid = users(("u1", "t1"), ("u2", "t1"), ("u3", "t2"))
        await run_and_check(agent_db, test_settings(database_url, redis_url), fake,
                            {"batch_type": "PREFERENCE_BATCH_USERS", "feature_type": "digest"},
                            {ok("t1", "u1", "batch:brief", "brief", {"key": "batch:brief", "items": [1]}),
                             ok("t1", "u2", "batch:default", "default", {"key": "batch:default", "items": [1, 2]}),
                             ok("t2", "u3", "batch:default", "default", {"key": "batch:default", "items": [1, 2]})},
                            {"results": {"metadata": metadata("PREFERENCE_BATCH_USERS", valid, feature_type="digest"),
                                         "items": {"valid_users": valid, "invalid_users": ["ghost", "u4"],
                                                   "filtered_items": 0}},
                             "validation": {"total": 5, "valid": 3, "invalid": 2}, "progress": progress(3)})
        assert sorted(e["body"]["template"] for e in fake.log) == ["brief", "default"]


async def test_preference_batch_categories_of_one_group(agent_db: Any, database_url: str, redis_url: str) -> None:
    """PREFERENCE_BATCH_CATEGORIES for the weekly group: u1's videos in one request with u1's template."""
    await prefs(agent_db)
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        valid = users(("u1", "t1"))
        await run_and_check(agent_db, test_settings(database_url, redis_url), fake,
                            {"batch_type": "PREFERENCE_BATCH_CATEGORIES", "feature_type": "digest",
                             "category_type": "video", "group": WEEKLY},
                            {ok("t1", "u1", "batch:brief", "brief", {"key": "batch:brief", "items": [1]})},
                            {"results": {"metadata": metadata("PREFERENCE_BATCH_CATEGORIES", valid,
                                                              feature_type="digest", group=WEEKLY,
                                                              category_type="video"),
                                         "items": {"valid_users": valid, "invalid_users": ["ghost", "u4"],
                                                   "filtered_items": 0}},
                             "validation": {"total": 3, "valid": 1, "invalid": 2}, "progress": progress(1)})


async def test_per_item_retries_with_backoff_and_a_final_failure(agent_db: Any, database_url: str,
                                                                 redis_url: str) -> None:
    """Per-item retries: u1 fails twice then succeeds on attempt 3; u2 fails every attempt and ends as a
    failed row (attempts 3, the error kept) without failing the run; u3 succeeds at once."""
    async with FakeAgent(AgentOptions(api_key=KEY, fail_items={"user:u1": 2, "user:u2": 99})) as fake:
        summary = await run(test_settings(database_url, redis_url), fake, batch_type="INDIVIDUAL_USERS",
                            max_attempts=3, retry_base_seconds=0.01)
        assert summary["status"] == "succeeded", summary
        rows = await results(agent_db)
        assert rows == {ok("t1", "u1", "user:u1", "default", sent_user="u1", attempts=3),
                        ("t1", "u2", "user:u2", "failed", None, True, 3),
                        ok("t2", "u3", "user:u3", "default", sent_user="u3")}
        assert dict(fake.counts) == {"user:u1": 3, "user:u2": 3, "user:u3": 1}
        ctx = await context(agent_db, summary["run_id"])
        assert ctx["progress"] == progress(3, succeeded=2, failed=1)


async def test_429_is_waited_out_without_costing_an_item_attempt(agent_db: Any, database_url: str,
                                                                 redis_url: str) -> None:
    """Every 2nd request is answered 429 (Retry-After 0): the runtime's client waits and sends again, so
    every item still succeeds on its first attempt, each answered 200 exactly once."""
    async with FakeAgent(AgentOptions(api_key=KEY, rate_limit_every=2)) as fake:
        summary = await run(test_settings(database_url, redis_url), fake, batch_type="INDIVIDUAL_USERS",
                            max_attempts=1, concurrency=1)
        assert summary["status"] == "succeeded", summary
        assert {r[3] for r in await results(agent_db)} == {"succeeded"}
        assert {r[6] for r in await results(agent_db)} == {1}
        assert dict(fake.ok_counts) == {"user:u1": 1, "user:u2": 1, "user:u3": 1}
        assert sum(e["status"] == 429 for e in fake.log) >= 2


async def test_wrong_api_key_fails_the_run_permanently(agent_db: Any, database_url: str, redis_url: str) -> None:
    """A 401 means the key is wrong for every item: the run fails at once (no retry row, no result rows)
    and its error names no key."""
    async with FakeAgent(AgentOptions(api_key="another-key")) as fake:
        summary = await run(test_settings(database_url, redis_url), fake, batch_type="INDIVIDUAL_USERS")
        assert summary["status"] == "failed", summary
        assert await results(agent_db) == set()
        assert await agent_db.fetchval("SELECT count(*) FROM batch_runs") == 1
        assert KEY not in str(summary)


async def test_tenant_filter_makes_users_and_owners_of_other_tenants_invalid(agent_db: Any, database_url: str,
                                                                             redis_url: str) -> None:
    """With ``tenant_id = t1``: named users of t2 are invalid like unknown ones, and so are the owners of
    category items from t2 (their items filtered); the context is stored under tenant t1."""
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        settings = test_settings(database_url, redis_url)
        summary = await run(settings, fake, batch_type="INDIVIDUAL_USERS", users=["u1", "u3"], tenant_id="t1")
        assert {r[1] for r in await results(agent_db, summary["run_id"])} == {"u1"}
        ctx = await context(agent_db, summary["run_id"], "t1")
        assert ctx["results"]["items"]["invalid_users"] == ["u3"]
        summary = await run(settings, fake, batch_type="INDIVIDUAL_CATEGORIES", category_type="video",
                            tenant_id="t1")
        assert {r[2] for r in await results(agent_db, summary["run_id"])} == {"video:v1"}
        ctx = await context(agent_db, summary["run_id"], "t1")
        assert (ctx["validation"], ctx["results"]["items"]["filtered_items"]) == \
            ({"total": 2, "valid": 1, "invalid": 1}, 1)
