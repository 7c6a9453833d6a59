"""Shared data and helpers of the agent_batch tests: seeded users, items and preferences, runs, rows."""

from __future__ import annotations

from typing import Any

from batcher.fakes.agent import FakeAgent, expected_output
from batcher.testing import run_job_once

KEY = "agent-test-key"
AGENT_TABLES = ("system_users", "category_items", "user_preferences", "batch_results", "batch_contexts")

# u1..u3 active in t1/t2, u4 inactive; "ghost" does not exist.
USERS = [("u1", "t1", True), ("u2", "t1", True), ("u3", "t2", True), ("u4", "t1", False)]
# articles of u1, u2, u4 (inactive: filtered) and of nobody; videos of u1 and u3.
ITEMS = [("article", "a1", {"lang": "en", "n": 1}, "u1"), ("article", "a2", {"lang": "de", "n": 2}, "u2"),
         ("article", "a3", {"lang": "en", "n": 3}, "u4"), ("article", "a4", {"lang": "en", "n": 4}, None),
         ("video", "v1", {"len": 10}, "u1"), ("video", "v2", {"len": 20}, "u3")]


async def seed(db: Any, users: list[tuple[str, str, bool]] = USERS,
               items: list[tuple[str, str, dict[str, Any], str | None]] = ITEMS) -> None:
    await db.execute(f"TRUNCATE {', '.join(AGENT_TABLES)}")
    await db.executemany("INSERT INTO system_users (user_id, tenant_id, active) VALUES ($1, $2, $3)", users)
    await db.executemany("INSERT INTO category_items (category_type, item_id, data, user_ref) "
                         "VALUES ($1, $2, $3, $4)", items)


async def prefer(db: Any, user: str, tenant: str, frequency: str, time: str, tz: str = "UTC",
                 template: str | None = None, feature: str = "digest") -> None:
    await db.execute(
        "INSERT INTO user_preferences (user_id, tenant_id, feature_type, frequency, time_of_day, timezone, "
        "template_override) VALUES ($1, $2, $3, $4, $5::text::time, $6, $7) ON CONFLICT (user_id, tenant_id, "
        "feature_type) DO UPDATE SET frequency = $4, time_of_day = $5::text::time, timezone = $6, "
        "template_override = $7, updated_at = now()", user, tenant, feature, frequency, time, tz, template)


async def run(settings: Any, fake: FakeAgent, **params: Any) -> dict[str, Any]:
    params = {"base_url": fake.url, "retry_base_seconds": 0.0, **params}
    return await run_job_once(settings, "agent_batch", params, literal_secrets={"api_key": KEY})


async def results(db: Any, run_id: int | None = None) -> set[tuple[Any, ...]]:
    rows = await db.fetch("SELECT tenant_id, user_id, item_key, status, output, error IS NOT NULL, attempts "
                          "FROM batch_results WHERE $1::bigint IS NULL OR run_id = $1", run_id)
    return {(r[0], r[1], r[2], r[3], _freeze(r[4]), r[5], r[6]) for r in rows}


def _freeze(value: Any) -> Any:
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


def ok(tenant: str, user: str, key: str, template: str, item_input: dict[str, Any] | None = None,
       sent_user: str | None = None, attempts: int = 1) -> tuple[Any, ...]:
    """A succeeded row as the fake answers it."""
    output = expected_output(template, item_input or {"key": key}, sent_user)
    return (tenant, user, key, "succeeded", _freeze(output), False, attempts)


async def context(db: Any, run_id: int, tenant: str = "") -> Any:
    return await db.fetchval("SELECT context FROM batch_contexts WHERE run_id = $1 AND tenant_id = $2",
                             run_id, tenant)


def users(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"user_id": u, "tenant_id": t} for u, t in pairs]
