"""The ``tracked-apps-check`` handler against the fake GitHub and Docker Hub (``batcher.fakes``), real
PostgreSQL and Redis, through the real runner."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from batcher.fakes.dockerhub import FakeDockerHub
from batcher.fakes.github import TOKEN, FakeGitHub
from batcher.testing import run_job_once, test_settings
from handlers.tracked_apps import github_namespace, newest

#: One admission a second with room for 100 at once: nothing waits, and each admission moves the GCRA's
#: theoretical arrival time (TAT) by exactly one second.
LIMITS = {ns: {"interval_ms": 3_600_000, "max_in_interval": 3600, "burst": 100}
          for ns in ("github:api:", "github:api:anonymous:", "dockerhub:api:")}
RELEASES = {"acme/app": [("v1.2.0", False), ("v1.3.0", False), ("v2.0.0-rc1", True)],
            "acme/prerelease-only": [("v0.1.0-beta", True)]}


@pytest.fixture
async def apps_db(db: Any) -> Any:
    await db.execute("TRUNCATE tracked_apps, docker_image_tags, docker_image_updates")
    return db


async def add(db: Any, name: str, source: str, current: str | None = None, prerelease: bool = False) -> None:
    await db.execute("INSERT INTO tracked_apps (name, source, current_version, allow_prerelease) "
                     "VALUES ($1, $2, $3, $4)", name, source, current, prerelease)


async def check(database_url: str, redis_url: str, token: str | None = None, jobs: Any = None,
                **params: Any) -> dict[str, Any]:
    settings = test_settings(database_url, redis_url, rate_limits=LIMITS, jobs=jobs)
    return await run_job_once(settings, "tracked-apps-check", params,
                              literal_secrets={"github_token": token} if token else None)


async def outcome(db: Any, summary: dict[str, Any]) -> tuple[Any, ...]:
    row = await db.fetchrow("SELECT status, items_checked, items_updated, result FROM batch_runs WHERE id = $1",
                            summary["run_id"])
    return row["status"], row["items_checked"], row["items_updated"], row["result"]


async def apps(db: Any) -> dict[str, tuple[Any, ...]]:
    rows = await db.fetch("SELECT name, latest_version, update_available, checked_at IS NOT NULL AS checked "
                          "FROM tracked_apps")
    return {r["name"]: (r["latest_version"], r["update_available"], r["checked"]) for r in rows}


async def test_tracked_apps_github_versions_prereleases_and_a_missing_repository(
        apps_db: Any, database_url: str, redis_url: str) -> None:
    """Latest full release vs the current version; a repository with only pre-releases has no latest
    unless the app opts in; a missing repository is that item's error and the run succeeds. A new
    release published before the second run counts as one update; the result has the original shape."""
    await add(apps_db, "app", "github:acme/app", "v1.2.0")
    await add(apps_db, "beta-only", "github:acme/prerelease-only", "0.0.1")
    await add(apps_db, "beta-opt-in", "github:acme/prerelease-only", "0.0.1", prerelease=True)
    await add(apps_db, "gone", "github:acme/missing", "1.0")
    async with FakeGitHub(RELEASES) as gh:
        first = await check(database_url, redis_url, TOKEN, github_base=gh.url)
        status, checked, updated, result = await outcome(apps_db, first)
        assert (status, checked, updated) == ("succeeded", 3, 0)
        assert await apps(apps_db) == {"app": ("v1.3.0", True, True), "beta-only": (None, False, True),
                                       "beta-opt-in": ("v0.1.0-beta", True, True), "gone": (None, False, False)}
        assert result["error"].startswith("gone: github:acme/missing: not found")
        assert result["itemsChecked"] == 3 and "app: latest v1.3.0 (update available)" in result["logs"]
        gh.publish("acme/app", "v1.4.0")
        second = await check(database_url, redis_url, TOKEN, github_base=gh.url)
    assert (await outcome(apps_db, second))[:3] == ("succeeded", 3, 1)
    assert (await apps(apps_db))["app"] == ("v1.4.0", True, True)


def tat(redis_db: redis.Redis, namespace: str) -> int:
    return int(redis_db.get(f"batcher:rl:{{{namespace}}}:tat") or 0)


@pytest.mark.parametrize("token", [TOKEN, None])
async def test_tracked_apps_304_costs_no_rate_limit_token_when_authenticated(
        apps_db: Any, database_url: str, redis_url: str, redis_db: redis.Redis, token: str | None) -> None:
    """The second check sends the stored ETag and gets 304. With a token (GitHub does not count such a
    304) the request's admission is given back: the namespace's TAT is where the first run left it.
    Anonymous (GitHub counts it) the admission stays spent: the TAT moves on by one emission (1 s)."""
    await add(apps_db, "app", "github:acme/app", "v1.2.0")
    namespace = github_namespace(token)
    async with FakeGitHub(RELEASES) as gh:
        await check(database_url, redis_url, token, github_base=gh.url)
        after_first = tat(redis_db, namespace)
        second = await check(database_url, redis_url, token, github_base=gh.url)
        statuses = [(e["status"], e["if_none_match"] is not None) for e in gh.log]
    assert statuses == [(200, False), (304, True)]
    assert (await outcome(apps_db, second))[:3] == ("succeeded", 1, 0)
    assert (await apps(apps_db))["app"] == ("v1.3.0", True, True)
    if token is not None:
        assert tat(redis_db, namespace) == after_first
    else:
        assert tat(redis_db, namespace) == after_first + 1_000_000


@pytest.mark.parametrize("status", [403, 429])
async def test_tracked_apps_github_primary_and_secondary_limits_are_waited_out(
        apps_db: Any, database_url: str, redis_url: str, status: int) -> None:
    """A 403 with ``x-ratelimit-remaining: 0`` (primary) or a 429 with ``retry-after`` (secondary)
    pauses the namespace and the request is sent again."""
    await add(apps_db, "app", "github:acme/app", "v1.2.0")
    async with FakeGitHub(RELEASES) as gh:
        gh.throttle_next, gh.throttle_status = 1, status
        summary = await check(database_url, redis_url, TOKEN, github_base=gh.url)
        statuses = [e["status"] for e in gh.log]
    assert statuses == [status, 200]
    assert (await outcome(apps_db, summary))[:3] == ("succeeded", 1, 0)


async def test_tracked_apps_docker_sources_reuse_docker_hub_data_when_covered(
        apps_db: Any, database_url: str, redis_url: str) -> None:
    """A repository listed by a docker-hub-pull job is answered from docker_image_tags (no Docker Hub
    request by the check); another is read from Docker Hub; tag patterns and non-version tags apply."""
    tags = {"latest": "sha256:0", "1.26.0": "sha256:1", "1.27.3": "sha256:2", "1.28.0-rc1": "sha256:3",
            "2.0.0": "sha256:4", "alpine": "sha256:5"}
    async with FakeDockerHub({"library/nginx": tags, "org/app": {"3.1.0": "sha256:a", "3.0.0": "sha256:b"}}) as hub:
        jobs = {"hub": {"type": "docker-hub-pull", "enabled": False,
                        "params": {"base_url": hub.url, "repositories": ["library/nginx"]}}}
        settings = test_settings(database_url, redis_url, rate_limits=LIMITS, jobs=jobs)
        await run_job_once(settings, "hub")
        await add(apps_db, "nginx-1", "docker:library/nginx:1.*", "1.26.0")
        await add(apps_db, "nginx", "docker:library/nginx", "1.26.0")
        await add(apps_db, "app", "docker:org/app", "3.1.0")
        before = len(hub.log)
        summary = await check(database_url, redis_url, jobs=jobs, docker_base=hub.url)
        paths = [e["path"] for e in hub.log[before:]]
    assert paths == ["/v2/repositories/org/app/tags"]
    assert (await outcome(apps_db, summary))[:3] == ("succeeded", 3, 0)
    assert await apps(apps_db) == {"nginx-1": ("1.27.3", True, True), "nginx": ("2.0.0", True, True),
                                   "app": ("3.1.0", False, True)}


def test_newest_ignores_prereleases_and_non_versions_unless_allowed() -> None:
    """Semantic comparison (1.10 > 1.9), a leading v, pre-releases only when allowed, globs."""
    names = ["latest", "v1.9.0", "v1.10.0", "v2.0.0rc1", "v2.0.0-beta.2", "alpine"]
    assert newest(names, prerelease=False) == "v1.10.0"
    assert newest(names, prerelease=True) == "v2.0.0rc1"
    assert newest(names, prerelease=False, pattern="v1.9*") == "v1.9.0"
    assert newest(["latest"], prerelease=True) is None
