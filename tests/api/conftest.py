"""Fixtures for the admin API tests: the real app factory on real PostgreSQL (and Redis), driven with
aiohttp's test client. No scheduler runs unless a test starts one, so queued runs stay queued."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from batcher.api import create_app
from batcher.models import Services
from batcher.testing import test_services, test_settings

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

#: Two synthetic jobs (so type "synthetic" is ambiguous), one datasync job (type resolves to it), and a
#: dependent job (no schedule of its own).
JOBS: dict[str, dict[str, Any]] = {
    "alpha": {"type": "synthetic", "interval_minutes": 60, "params": {"records": 10, "batch_size": 5}},
    "beta": {"type": "synthetic", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "params": {"records": 5}},
    "events-sync": {"type": "datasync", "enabled": False, "interval_minutes": 5,
                    "params": {"base_url": "http://127.0.0.1:9", "api_key_env": "BATCHER_TEST_DATASYNC_KEY"}},
    "after-alpha": {"type": "synthetic", "depends_on": ["alpha"], "params": {"records": 1}},
}

Client = TestClient  # type: ignore[type-arg]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def services(db: Any, database_url: str, redis_url: str) -> AsyncIterator[Services]:
    """Services on the test database with JOBS synced (tables emptied first by ``db``)."""
    async with test_services(test_settings(database_url, redis_url, jobs=JOBS)) as svc:
        yield svc


@pytest.fixture
async def make_client(services: Services) -> AsyncIterator[MakeClient]:
    """Build a test client on ``create_app(services, …)`` (token, scheduler and options as given)."""
    clients: list[Client] = []

    async def make(*, token: str | None = TOKEN, scheduler: Any = None, svc: Services | None = None,
                   **options: Any) -> Client:
        options.setdefault("commit_lag", 0.0)  # count a finished run on the next scrape
        app = create_app(svc or services, scheduler, token=token, **options)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    """A client of the API with the token configured."""
    return await make_client()


async def ok(response: Any, status: int = 200) -> Any:
    """The JSON body of a response that must have this status and (for 200) success true."""
    body = await response.json()
    assert response.status == status, body
    if status == 200:
        assert body["success"] is True
    return body


async def error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The error body of a response that must have this status (and code): the error envelope."""
    body = await response.json()
    assert response.status == status, body
    assert body["success"] is False and set(body["error"]) <= {"code", "message", "field"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])
