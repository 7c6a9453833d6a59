"""Admin API under hostile input: every query and path parameter of the OpenAPI document gets SQL
injection strings and oversized values (the walk reads /api/openapi.json, so a new route or filter is
covered without touching this file), job names in bodies get the same, and request bodies are
size-limited (``api.max_body_bytes``: 413 with the error envelope, for a declared length and a chunked
body). Never a 5xx; a 2xx only for a value that is a legal filter, and then nothing leaks past it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest

from batcher.settings import load_settings
from tests.api.conftest import AUTH, Client, MakeClient, error, ok

INJECTIONS = [
    "' OR '1'='1", "1 OR 1=1", "1; DROP TABLE batch_runs; --", "alpha'; UPDATE batch_config SET paused = true; --",
    "\" OR \"\"=\"", "') OR ('x'='x", "1' UNION SELECT claim_token FROM batch_runs --", "%' --", "_",
    "$1", "1::text", "E'\\x00'", "alpha\\", "*", "NULL", "-1", "0", "1e309", "NaN", "Infinity", "true'",
    "9" * 30, "2024-01-01T00:00:00Z' OR '1'='1", "2024-13-45T99:99:99Z", "0000-01-01T00:00:00+99:00",
    "[]", "{}", "%00", "%ff", "%ed%a0%80", "x" * 5000,
]
OVERSIZED = ["x" * 20_000, "9" * 20_000]  # beyond aiohttp's 8 KiB request line: refused before routing
COUNT_KEYS = ("runs", "deadLetters", "history", "next")


def _encoded(value: str) -> str:
    """Percent-encode for the URL, except the values that are already percent-encoded bytes."""
    return value if value.startswith("%") and len(value) <= 9 else quote(value, safe="")


def _operations(document: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    return [(method.upper(), path, op.get("parameters", []))
            for path, item in document["paths"].items() for method, op in item.items()]


def _url(path: str, params: list[dict[str, Any]], target: str, value: str) -> str:
    """``path`` with the target parameter set to ``value`` and every other path parameter valid."""
    filled = path.replace("{id}", "1").replace("{name}", "alpha")
    placeholder = next((f"{{{p['name']}}}" for p in params if p["name"] == target and p["in"] == "path"), None)
    if placeholder:
        return path.replace(placeholder, _encoded(value)).replace("{id}", "1").replace("{name}", "alpha")
    return f"{filled}?{target}={_encoded(value)}"


@pytest.fixture
async def seeded(client: Client, services: Any) -> AsyncIterator[Client]:
    """Runs of two jobs exist, so a filter that leaked (``OR 1=1``) would return rows."""
    for job in ("alpha", "events-sync"):
        await ok(await client.post("/api/batch/trigger", json={"jobName": job}, headers=AUTH))
    yield client


async def _snapshot(services: Any) -> list[Any]:
    return [dict(r) for r in await services.pool.fetch(
        "SELECT job_name, enabled, paused, params, source, cron, interval_minutes FROM batch_config ORDER BY 1")] + \
        [dict(r) for r in await services.pool.fetch("SELECT id, status, cancel_requested FROM batch_runs ORDER BY 1")]


async def _check(client: Client, method: str, url: str, what: str) -> None:
    response = await client.request(method, url, headers=AUTH)
    assert response.status < 500, (what, response.status, await response.text())
    if response.status >= 400 and response.content_type == "application/json":
        await error(response, response.status)
    elif response.status == 200 and response.content_type == "application/json":
        body = await response.json()
        for key in COUNT_KEYS:  # a filter that matched everything would show the seeded runs
            if isinstance(body.get(key), list) and ("job=" in url or "/jobs/" in url):
                assert body[key] == [], (what, body)
        if body.get("run") is not None and "job=" in url:
            raise AssertionError((what, body))


async def test_every_parameter_of_the_openapi_document_rejects_injection_and_oversized_values(
        seeded: Client, services: Any) -> None:
    """Each query and path parameter of each operation in /api/openapi.json, with SQL injection strings,
    NUL and invalid UTF-8, out-of-range numbers and dates, and values of 5 KB and 20 KB: never a 5xx,
    4xx answers use the error envelope, a 200 for a job filter matches no run (the value was a bound
    parameter, not SQL), and nothing in batch_config or batch_runs changed."""
    client = seeded
    document = await (await client.get("/api/openapi.json")).json()
    before = await _snapshot(services)
    checked = set()
    for method, path, params in _operations(document):
        for param in params:
            if method == "POST" and param["in"] == "path":  # a valid name/id would mutate: invalid ones only
                values = [v for v in INJECTIONS + OVERSIZED if v not in ("alpha", "1")]
            elif method == "POST":
                continue
            else:
                values = INJECTIONS + OVERSIZED
            for value in values:
                await _check(client, method, _url(path, params, param["name"], value),
                             f"{method} {path} {param['name']}={value[:40]!r}")
            checked.add((path, param["name"]))
    assert {("/api/batch/runs", "job"), ("/api/batch/runs", "status"), ("/api/batch/runs", "since"),
            ("/api/batch/runs", "cursor"), ("/api/batch/runs", "limit"), ("/api/batch/runs/{id}", "id"),
            ("/api/batch/jobs/{name}/pause", "name"), ("/api/batch/dead-letters", "job")} <= checked
    assert await _snapshot(services) == before
    assert await services.pool.fetchval("SELECT count(*) FROM batch_runs") == 2


@pytest.mark.parametrize("field", ["jobName", "jobType"])
async def test_injection_in_a_body_job_reference_is_4xx_and_changes_nothing(
        seeded: Client, services: Any, field: str) -> None:
    """jobName / jobType in trigger and config bodies, with the same strings: 400 or 404, nothing changed."""
    before = await _snapshot(services)
    for value in INJECTIONS:
        for path, extra in (("/api/batch/trigger", {}), ("/api/batch/config", {"priority": 5})):
            response = await seeded.post(path, json={field: value, **extra}, headers=AUTH)
            assert 400 <= response.status < 500, (path, value, await response.text())
            await error(response, response.status)
    assert await _snapshot(services) == before


def _sized_body(size: int) -> bytes:
    body = json.dumps({"jobName": "alpha", "params": {"pad": ""}}).encode()
    return body.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(body)) + b'"')


@pytest.fixture
async def small_limit_client(make_client: MakeClient, services: Any) -> Client:
    """A client of an API whose settings say api.max_body_bytes = 2048."""
    api = services.settings.api.model_copy(update={"max_body_bytes": 2048})
    svc = dataclasses.replace(services, settings=services.settings.model_copy(update={"api": api}))
    return await make_client(svc=svc)


async def test_the_body_limit_is_api_max_body_bytes_for_declared_and_chunked_bodies(
        small_limit_client: Client, services: Any) -> None:
    """With api.max_body_bytes = 2048 a body of 2048 bytes is read (here: 400, the pad param is unknown)
    and one of 2049 bytes is a 413 payload_too_large envelope — with a Content-Length and chunked
    (no length: the limit applies while reading). Nothing is queued."""
    client = small_limit_client
    headers = {**AUTH, "Content-Type": "application/json"}
    assert len(_sized_body(2048)) == 2048
    await error(await client.post("/api/batch/trigger", data=_sized_body(2048), headers=headers), 400)
    err = await error(await client.post("/api/batch/trigger", data=_sized_body(2049), headers=headers),
                      413, "payload_too_large")
    assert err["message"] == "request body too large (over 2048 bytes)"

    async def chunks() -> AsyncIterator[bytes]:
        body = _sized_body(5000)
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    await error(await client.post("/api/batch/trigger", data=chunks(), headers=headers), 413, "payload_too_large")
    assert await services.pool.fetchval("SELECT count(*) FROM batch_runs") == 0


async def test_the_default_body_limit_is_64_kib(client: Client) -> None:
    """Without api.max_body_bytes the limit is 64 KiB: 65536 bytes are read, 65537 are a 413."""
    headers = {**AUTH, "Content-Type": "application/json"}
    await error(await client.post("/api/batch/trigger", data=_sized_body(65_536), headers=headers), 400)
    await error(await client.post("/api/batch/trigger", data=_sized_body(65_537), headers=headers),
                413, "payload_too_large")


def test_api_max_body_bytes_comes_from_the_file_or_the_environment(tmp_path: Any) -> None:
    """api.max_body_bytes in the TOML file, BATCHER_API_MAX_BODY_BYTES in the environment (stronger);
    below 1 KiB or above 64 MiB is a ConfigError naming the key."""
    from batcher.errors import ConfigError

    path = tmp_path / "batcher.toml"
    path.write_text("[api]\nmax_body_bytes = 1048576\n")
    assert load_settings({}, config_path=path).api.max_body_bytes == 1_048_576
    assert load_settings({"BATCHER_API_MAX_BODY_BYTES": "4096"}, config_path=path).api.max_body_bytes == 4096
    for bad in ("100", str(65 * 1024 * 1024), "lots"):
        with pytest.raises(ConfigError, match="max_body_bytes"):
            load_settings({"BATCHER_API_MAX_BODY_BYTES": bad}, config_path=path)
