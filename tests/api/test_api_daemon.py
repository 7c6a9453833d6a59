"""Admin API with a real Scheduler and Worker: status, /healthz (the loop ticks), /readyz (PostgreSQL and
Redis reachable), and the 503s when the loop stalls or a service is down."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from batcher import store
from batcher.models import Services
from batcher.scheduler import Scheduler
from tests import inprocess
from tests.api.conftest import Client, MakeClient, error, ok
from tests.polling import wait_for


async def poll_json(client: Client, path: str, predicate: Any, timeout: float = 20.0) -> Any:
    """GET ``path`` until ``predicate(status, body)`` holds; fail after ``timeout`` seconds."""
    last: list[Any] = []

    async def matches() -> Any:
        response = await client.get(path)
        body = await response.json()
        last[:] = [response.status, body]
        return (body,) if predicate(response.status, body) else None

    found = await wait_for(matches, timeout, 0.05, what=f"{path} matching",
                           details=lambda: f"last: {last[0]} {last[1]}" if last else "no answer")
    return found[0]


@pytest.fixture
async def daemon(services: Services) -> AsyncIterator[Scheduler]:
    """The daemon's scheduler and worker on the test services (alpha is due at once and runs)."""
    async with inprocess.daemon(services, lease_seconds=10, drain_seconds=1.0) as scheduler:
        yield scheduler


async def test_status_of_a_running_daemon(make_client: MakeClient, daemon: Scheduler) -> None:
    """GET /api/batch/status has the original shape (registeredJobs, runningJobs, scheduler with
    isRunning/isInitialized/activeJobTimers/lastRunTimes) plus this worker and the live workers; /healthz
    is 200 while the loop ticks. A job that ran shows its last run time."""
    client = await make_client(scheduler=daemon)
    health = await poll_json(client, "/healthz", lambda s, b: s == 200 and b["ticks"] > 0)
    assert health["alive"] is True and health["secondsSinceTick"] < 30
    await poll_json(client, "/api/batch/runs/latest?job=alpha",
                    lambda s, b: b["run"] is not None and b["run"]["status"] == "succeeded")
    body = await ok(await client.get("/api/batch/status"))
    status = body["status"]
    assert status["registeredJobs"] == ["after-alpha", "alpha", "beta", "events-sync"]
    assert isinstance(status["runningJobs"], list)
    sched = status["scheduler"]
    assert sched["isRunning"] is True and sched["isInitialized"] is True and sched["ticks"] > 0
    assert sched["activeJobTimers"] == 2 and sched["lastRunTimes"]["alpha"] is not None
    assert sched["lastRunTimes"]["beta"] is None
    assert status["worker"]["workerId"] == daemon.worker.worker_id and status["worker"]["concurrency"] >= 1
    mine = [w for w in status["workers"] if w["workerId"] == daemon.worker.worker_id]
    assert mine and mine[0]["alive"] is True


async def test_healthz_is_503_when_the_loop_stalls(make_client: MakeClient) -> None:
    """/healthz compares the loop's last tick with the stall limit: an old tick is 503 alive=false, a
    fresh one 200; without a scheduler (API only) it is 503."""
    sched = SimpleNamespace(ticks=5, last_tick=time.monotonic() - 100, tick_seconds=1.0, concurrency=1,
                            queues=None, running={}, worker=SimpleNamespace(worker_id="w"),
                            loop_healthy=lambda bound: True)
    client = await make_client(scheduler=sched, stall_after=30.0)
    body = await (await client.get("/healthz")).json()
    assert body == {"success": False, "alive": False, "ticks": 5, "secondsSinceTick": pytest.approx(100, abs=5)}
    sched.last_tick = time.monotonic()
    await ok(await client.get("/healthz"))
    assert (await (await client.get("/api/batch/status")).json())["status"]["scheduler"]["isRunning"] is True
    bare = await make_client()
    assert (await bare.get("/healthz")).status == 503


async def test_readyz_checks_postgres_and_redis(make_client: MakeClient, services: Services) -> None:
    """/readyz is 200 with both services reachable, 503 naming the one that is not: Redis on a closed
    port, or a PostgreSQL pool that no longer works."""
    body = await ok(await (await make_client()).get("/readyz"))
    assert body["checks"]["postgres"]["ok"] and body["checks"]["redis"]["ok"]
    no_redis = dataclasses.replace(services, redis_url="redis://127.0.0.1:1/1")
    response = await (await make_client(svc=no_redis)).get("/readyz")
    body = await response.json()
    assert response.status == 503 and body["success"] is False
    assert body["checks"]["postgres"]["ok"] is True and body["checks"]["redis"]["ok"] is False
    closed = await store.create_pool(services.database_url, size=2)
    await closed.close()
    no_pg = dataclasses.replace(services, pool=closed)
    response = await (await make_client(svc=no_pg)).get("/readyz")
    body = await response.json()
    assert response.status == 503 and body["checks"]["postgres"]["ok"] is False
    await error(await (await make_client(svc=no_pg)).get("/api/batch/config"), 503, "database_unavailable")
