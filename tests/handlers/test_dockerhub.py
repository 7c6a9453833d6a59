"""The ``docker-hub-pull`` handler against the fake Docker Hub (``batcher.fakes.dockerhub``), real
PostgreSQL and Redis, through the real runner (``batcher.testing.run_job_once``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from batcher.fakes.dockerhub import FakeDockerHub
from batcher.responses import parse_retry_delay
from batcher.testing import run_job_once, test_settings

NGINX = {f"1.{i}": f"sha256:{i:064x}" for i in range(150)}  # two pages of 100
UNLIMITED = {"dockerhub:api:": {"interval_ms": 1, "max_in_interval": 1000, "burst": 1000}}


@pytest.fixture
async def hub_db(db: Any) -> Any:
    await db.execute("TRUNCATE docker_image_tags, docker_image_updates")
    return db


async def run(database_url: str, redis_url: str, hub: FakeDockerHub, *repos: str,
              secrets: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    settings = test_settings(database_url, redis_url, rate_limits=UNLIMITED)
    return await run_job_once(settings, "docker-hub-pull",
                              {"base_url": hub.url, "repositories": list(repos), **params},
                              literal_secrets=secrets)


async def run_row(db: Any, summary: dict[str, Any]) -> dict[str, Any]:
    return dict(await db.fetchrow("SELECT status, items_checked, items_updated, result FROM batch_runs "
                                  "WHERE id = $1", summary["run_id"]))


async def test_dockerhub_counts_and_update_history_across_two_runs(hub_db: Any, database_url: str,
                                                                   redis_url: str) -> None:
    """Run 1 checks every tag of two pages (150 + 2) and updates none; after one digest changes, run 2
    checks them all again and updates exactly one, with one history row (old → new digest); the run
    record carries the original result shape and its logs."""
    async with FakeDockerHub({"library/nginx": NGINX, "org/app": {"latest": "sha256:a", "v2": "sha256:b"}}) as hub:
        first = await run(database_url, redis_url, hub, "library/nginx", "org/app")
        row = await run_row(hub_db, first)
        assert (row["status"], row["items_checked"], row["items_updated"]) == ("succeeded", 152, 0)
        assert row["result"] == {"itemsChecked": 152, "itemsUpdated": 0, "error": None,
                                 "logs": ["library/nginx: 150 tags checked, 0 updated",
                                          "org/app: 2 tags checked, 0 updated"]}
        assert [e["page_size"] for e in hub.log if e["path"].endswith("nginx/tags")] == [100, 100]
        hub.set_digest("library/nginx", "1.7", "sha256:new")
        second = await run(database_url, redis_url, hub, "library/nginx", "org/app")
    row = await run_row(hub_db, second)
    assert (row["status"], row["items_checked"], row["items_updated"]) == ("succeeded", 152, 1)
    assert row["result"]["itemsUpdated"] == 1 and row["result"]["error"] is None
    history = [dict(r) for r in await hub_db.fetch(
        "SELECT repository, tag, old_digest, new_digest, root_run_id FROM docker_image_updates")]
    assert history == [{"repository": "library/nginx", "tag": "1.7", "old_digest": NGINX["1.7"],
                        "new_digest": "sha256:new", "root_run_id": second["run_id"]}]
    tag = await hub_db.fetchrow("SELECT digest, architectures, size_bytes, last_updated FROM docker_image_tags "
                                "WHERE repository = 'library/nginx' AND tag = '1.7'")
    index = sorted(NGINX).index("1.7")  # the fake numbers tags in name order
    assert tag["digest"] == "sha256:new" and tag["size_bytes"] == 1000 + index
    assert tag["architectures"] == (["amd64", "arm64"] if index % 2 == 0 else ["amd64"])
    assert await hub_db.fetchval("SELECT count(*) FROM docker_image_tags") == 152


async def test_dockerhub_missing_repository_is_an_item_error(hub_db: Any, database_url: str,
                                                             redis_url: str) -> None:
    """A 404 repository is recorded as that item's error; the others are read; the run succeeds."""
    async with FakeDockerHub({"org/app": {"latest": "sha256:a"}}) as hub:
        summary = await run(database_url, redis_url, hub, "org/missing", "org/app")
    row = await run_row(hub_db, summary)
    assert row["status"] == "succeeded" and row["items_checked"] == 1
    assert row["result"]["error"] == "org/missing: repository not found (HTTP 404)"
    assert row["result"]["itemsChecked"] == 1


async def test_dockerhub_anonymous_deep_paging_403_is_recorded_not_looped(hub_db: Any, database_url: str,
                                                                          redis_url: str) -> None:
    """Anonymous paging past what Docker Hub allows answers 403: the pages read are kept, the error is
    recorded once and the run goes on (one request for the refused page, no loop)."""
    async with FakeDockerHub({"library/nginx": NGINX}, anonymous_max_page=1) as hub:
        summary = await run(database_url, redis_url, hub, "library/nginx")
        requests = [e["status"] for e in hub.log]
    row = await run_row(hub_db, summary)
    assert requests == [200, 403]
    assert row["status"] == "succeeded" and row["items_checked"] == 100
    assert "pagination offset too large" in row["result"]["error"]


async def test_dockerhub_credentials_exchange_a_token_and_page_deeply(hub_db: Any, database_url: str,
                                                                      redis_url: str) -> None:
    """With username + access_token the handler posts {identifier, secret} once and sends the bearer on
    every tag request, so the deep page is allowed."""
    async with FakeDockerHub({"library/nginx": NGINX}, anonymous_max_page=1) as hub:
        summary = await run(database_url, redis_url, hub, "library/nginx", username="alice",
                               secrets={"access_token": "dckr_pat_fake"})
        tag_requests = [e for e in hub.log if e["method"] == "GET"]
    row = await run_row(hub_db, summary)
    assert row["status"] == "succeeded" and row["items_checked"] == 150 and row["result"]["error"] is None
    assert hub.tokens_issued == 1 and all(e["authorized"] for e in tag_requests) and len(tag_requests) == 2


@pytest.mark.parametrize("header", ["Retry-After", "retry-after", "X-Retry-After"])
async def test_dockerhub_429_with_each_retry_header_form_is_waited_out(hub_db: Any, database_url: str,
                                                                       redis_url: str, header: str) -> None:
    """A 429 with ``Retry-After`` seconds, ``retry-after`` epoch or ``X-Retry-After`` epoch pauses the
    namespace and the request is sent again; the run succeeds with every tag."""
    async with FakeDockerHub({"org/app": {"latest": "sha256:a"}}) as hub:
        hub.rate_limit_next, hub.rate_limit_header, hub.rate_limit_seconds = 1, header, 1
        summary = await run(database_url, redis_url, hub, "org/app")
        statuses = [e["status"] for e in hub.log]
    row = await run_row(hub_db, summary)
    assert statuses == [429, 200] and row["status"] == "succeeded" and row["items_checked"] == 1


@pytest.mark.parametrize(("headers", "low", "high"), [
    ({"Retry-After": "30"}, 30, 30),
    ({"retry-after": "{epoch+40}"}, 38, 40),
    ({"X-Retry-After": "{epoch+50}"}, 48, 50),
])
def test_retry_delay_reads_docker_hub_header_forms(headers: dict[str, str], low: float, high: float) -> None:
    """Seconds, an epoch in ``retry-after`` and an epoch in ``X-Retry-After`` all give the right pause."""
    import multidict

    now = time.time()
    values = {k: v.replace("{epoch+40}", str(int(now) + 40)).replace("{epoch+50}", str(int(now) + 50))
              for k, v in headers.items()}
    delay, problems = parse_retry_delay(multidict.CIMultiDict(values), now)
    assert problems == [] and low <= delay <= high


async def test_dockerhub_token_is_renewed_before_it_expires(hub_db: Any, database_url: str, redis_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """When the token's lifetime has passed (here: at once), the next request first gets a new one."""
    import handlers.dockerhub

    monkeypatch.setattr(handlers.dockerhub, "TOKEN_LIFETIME_S", 0.0)
    async with FakeDockerHub({"library/nginx": NGINX}) as hub:
        summary = await run(database_url, redis_url, hub, "library/nginx", username="alice",
                            secrets={"access_token": "dckr_pat_fake"})
        posts = [e["status"] for e in hub.log if e["method"] == "POST"]
    assert (await run_row(hub_db, summary))["status"] == "succeeded"
    assert posts == [200, 200] and hub.tokens_issued == 2  # one per tag page
