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
