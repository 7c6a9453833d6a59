"""The agent handler's status view (``GET /api/agent/status``, called directly), derived group jobs as
the scheduler's hook writes them, and the in-process cache: hits within the TTL, dropped on change."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.derived import DerivedJobs
from batcher.fakes.agent import AgentOptions, FakeAgent
from batcher.testing import test_services, test_settings
from handlers.agent_batch import agent_status, agent_status_query
from handlers.agent_batch.cache import CACHE
from tests.handlers.agent_fixtures import KEY, prefer, run, seed


@pytest.fixture
async def agent_db(db: Any) -> Any:
    await seed(db)
    return db


def parent(url: str) -> dict[str, Any]:
    return {"type": "agent_batch", "enabled": True,
            "params": {"base_url": url, "api_key_env": "AGENT_KEY", "batch_type": "PREFERENCE_INDIVIDUAL_USERS",
                       "feature_type": "digest"}}


async def test_status_of_a_user_with_preference_group_job_and_runs(agent_db: Any, database_url: str,
                                                                   redis_url: str) -> None:
    """u1 prefers weekly 09:00 UTC: the status names that preference, the group's derived job with its
    next run, and the run chain that processed u1 with its result counts; a user without results and
    without a preference row has neither."""
    await prefer(agent_db, "u1", "t1", "weekly", "09:00", template="brief")
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        settings = test_settings(database_url, redis_url, jobs={"prefs": parent(fake.url)})
        async with test_services(settings) as services:
            assert await DerivedJobs(services.registry).sync(services.pool)
        group = {"frequency": "weekly", "time_of_day": "09:00", "timezone": "UTC"}
        summary = await run(settings, fake, batch_type="PREFERENCE_INDIVIDUAL_USERS", feature_type="digest",
                            group=group)
        assert summary["status"] == "succeeded", summary
    job = await agent_db.fetchrow("SELECT next_run_at FROM batch_config WHERE job_name = 'prefs@weekly-0900-UTC'")
    status = await agent_status(agent_db, tenant="t1", user="u1", feature_type="digest")
    updated = status["preference"].pop("updated_at")
    assert isinstance(updated, str)
    written = status["runs"][0].pop("written_at")
    finished = status["runs"][0].pop("finished_at")
    assert written and finished
    assert status == {
        "tenant": "t1", "user": "u1", "feature_type": "digest", "active": True,
        "preference": {"frequency": "weekly", "time_of_day": "09:00", "timezone": "UTC",
                       "template_override": "brief"},
        "group_jobs": [{"job_name": "prefs@weekly-0900-UTC", "enabled": True,
                        "next_run_at": job["next_run_at"].isoformat()}],
        "runs": [{"run_id": summary["run_id"], "job_name": "agent_batch", "last_run_id": summary["run_id"],
                  "status": "succeeded", "succeeded": 1, "failed": 0}]}
    other = await agent_status(agent_db, tenant="t2", user="u3", feature_type="digest")
    assert other == {"tenant": "t2", "user": "u3", "feature_type": "digest", "active": True,
                     "preference": None, "group_jobs": [], "runs": []}


async def test_derived_group_job_orphaned_when_its_last_user_leaves_and_back_when_one_joins(
        agent_db: Any, database_url: str, redis_url: str) -> None:
    """The weekly group's job exists while u1 prefers weekly, and the parent itself has no next run (it
    is scheduled through its group jobs); u1 leaving the group disables and orphans the job (its row
    stays); u2 joining enables it again with a fresh next run; disabling the parent orphans every job
    derived from it."""
    await prefer(agent_db, "u1", "t1", "weekly", "09:00")
    weekly = "SELECT enabled, orphaned, next_run_at IS NOT NULL FROM batch_config WHERE job_name = $1"
    name = "prefs@weekly-0900-UTC"
    settings = test_settings(database_url, redis_url, jobs={"prefs": parent("http://127.0.0.1:9")})
    async with test_services(settings) as services:
        derived = DerivedJobs(services.registry)
        assert await derived.sync(services.pool)
        assert tuple(await agent_db.fetchrow(weekly, name)) == (True, False, True)
        assert tuple(await agent_db.fetchrow(weekly, "prefs")) == (True, False, False)
        assert not await derived.sync(services.pool), "an unchanged tick writes nothing"
        await prefer(agent_db, "u1", "t1", "daily", "09:00")
        assert await derived.sync(services.pool)
        assert tuple(await agent_db.fetchrow(weekly, name)) == (False, True, False)
        await prefer(agent_db, "u2", "t1", "weekly", "09:00")
        assert await derived.sync(services.pool)
        assert tuple(await agent_db.fetchrow(weekly, name)) == (True, False, True)
        await agent_db.execute("UPDATE batch_config SET enabled = false WHERE job_name = 'prefs'")
        assert await derived.sync(services.pool)
        left = await agent_db.fetchval("SELECT count(*) FROM batch_config WHERE derived_from = 'prefs' "
                                       "AND enabled")
        assert left == 0


async def test_category_pages_cached_within_ttl_and_dropped_on_change(agent_db: Any, database_url: str,
                                                                      redis_url: str) -> None:
    """A second run within the TTL reads category pages from the in-process cache; inserting an item bumps
    the table's change counter, so the next run reads afresh and processes the new item."""
    settings = test_settings(database_url, redis_url)
    CACHE.clear()
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        params = {"batch_type": "INDIVIDUAL_CATEGORIES", "category_type": "video", "cache_ttl_seconds": 300}
        assert (await run(settings, fake, **params))["status"] == "succeeded"
        hits = CACHE.hits
        assert (await run(settings, fake, **params))["status"] == "succeeded"
        assert CACHE.hits > hits
        await agent_db.execute("INSERT INTO category_items VALUES ('video', 'v3', '{}', 'u2')")
        summary = await run(settings, fake, **params)
        keys = {r["item_key"] for r in await agent_db.fetch("SELECT item_key FROM batch_results WHERE run_id = $1",
                                                            summary["run_id"])}
        assert keys == {"video:v1", "video:v2", "video:v3"}


async def test_status_query_requires_tenant_and_user(agent_db: Any) -> None:
    """The route entry refuses a query without tenant or user (a 400 once wired) and passes an empty
    feature_type as none."""
    with pytest.raises(ValueError, match="tenant, user"):
        await agent_status_query(agent_db, {"feature_type": "digest"})
    status = await agent_status_query(agent_db, {"tenant": "t1", "user": "u2", "feature_type": ""})
    assert (status["active"], status["feature_type"], status["runs"]) == (True, None, [])


async def test_status_route_is_served_by_the_admin_api(agent_db: Any, database_url: str, redis_url: str) -> None:
    """``GET /api/agent/status`` is the agent handler's own route (through the handler-owned routes of the
    registry): it answers the status of a user, 400 naming a missing parameter, and is in the OpenAPI
    document."""
    from aiohttp.test_utils import TestClient, TestServer

    from batcher.api import create_app

    await prefer(agent_db, "u1", "t1", "weekly", "09:00", template="brief")
    async with test_services(test_settings(database_url, redis_url)) as services:
        client = TestClient(TestServer(create_app(services, token=None), host="127.0.0.1"))
        await client.start_server()
        try:
            ok = await client.get("/api/agent/status", params={"tenant": "t1", "user": "u1",
                                                               "feature_type": "digest"})
            body = await ok.json()
            missing = await client.get("/api/agent/status", params={"tenant": "t1"})
            error = await missing.json()
            document = await (await client.get("/api/openapi.json")).json()
        finally:
            await client.close()
    assert ok.status == 200 and body["success"] is True and body["active"] is True
    assert body["preference"]["frequency"] == "weekly"
    assert missing.status == 400 and "user" in error["error"]["message"]
    assert document["paths"]["/api/agent/status"]["get"]["operationId"] == "agentStatus"
