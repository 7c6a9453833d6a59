"""Admin API, protocol: token rules, read-only mode, the error envelope for bad bodies and routes,
413, and the refusal to expose the API beyond loopback without a token."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batcher.api import check_bind
from batcher.errors import ConfigError
from batcher.settings import ApiSettings
from tests.api.conftest import AUTH, TOKEN, Client, MakeClient, error, ok
from tests.e2e.procs import REPO, batcher_env, write_config

MUTATING: list[tuple[str, dict[str, Any] | None]] = [
    ("/api/batch/config", {"jobType": "alpha", "priority": 1}),
    ("/api/batch/trigger", {"jobType": "alpha"}),
    ("/api/batch/runs/1/cancel", None),
    ("/api/batch/jobs/alpha/pause", None),
    ("/api/batch/jobs/alpha/resume", None),
]
READS = ["/api/batch/config", "/api/batch/status", "/api/batch/runs", "/api/batch/runs/latest",
         "/api/batch/jobs/alpha/next", "/api/batch/dead-letters", "/api/openapi.json", "/readyz"]


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN},
])
async def test_mutations_need_the_bearer_token(client: Client, services: Any, headers: dict[str, str]) -> None:
    """Every mutating endpoint answers 401 (with WWW-Authenticate: Bearer) to a missing, malformed or
    wrong token, before reading the body, and changes nothing; the token is never echoed."""
    for path, body in MUTATING:
        response = await client.post(path, json=body, headers=headers)
        err = await error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer" and TOKEN not in err["message"]
    assert await services.pool.fetchval("SELECT count(*) FROM batch_runs") == 0
    assert await services.pool.fetchval("SELECT count(*) FROM batch_config WHERE source = 'api' OR paused") == 0


async def test_the_right_token_is_accepted(client: Client) -> None:
    """With ``Authorization: Bearer <BATCHER_API_TOKEN>`` (scheme case-insensitive) a mutation succeeds."""
    await ok(await client.post("/api/batch/jobs/alpha/pause", headers=AUTH))
    await ok(await client.post("/api/batch/jobs/alpha/resume", headers={"Authorization": f"bearer {TOKEN}"}))


async def test_without_a_token_the_api_is_read_only(make_client: MakeClient) -> None:
    """No BATCHER_API_TOKEN: every mutation is 403 read_only (whatever header is sent), every read works."""
    client = await make_client(token=None)
    for path, body in MUTATING:
        err = await error(await client.post(path, json=body, headers=AUTH), 403, "read_only")
        assert "BATCHER_API_TOKEN" in err["message"]
    for path in READS:
        assert (await client.get(path)).status == 200, path


async def test_reads_need_no_token(client: Client) -> None:
    """Reads are open even when a token is configured (Prometheus and dashboards need none)."""
    for path in [*READS, "/metrics"]:
        assert (await client.get(path)).status == 200, path


MALFORMED = [
    (b"", "JSON object body is required"),
    (b"{not json", "not acceptable JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"alpha"', "must be a JSON object"),
    (b'{"jobType": "alpha", "params": {"x": NaN}}', "not acceptable JSON"),
    (b'{"jobType": "alpha", "params": {"x": 1e999}}', "finite"),
    (b'{"jobType": "al\\u0000pha"}', "NUL"),
    (b'{"jobType": "alpha", "params": {"k\\u0000": 1}}', "NUL"),
    (b'{"jobType": "\\ud800"}', "Unicode"),
    (b"\xff\xfe{}", "not acceptable JSON"),
    (b"[" * 100_00 + b"]" * 100_00, "not acceptable JSON"),
]


async def test_malformed_bodies_are_400_invalid_json(client: Client) -> None:
    """Malformed JSON, non-objects, NaN/infinite numbers, NUL characters and lone surrogates (which
    PostgreSQL cannot store) are rejected with 400 invalid_json before anything reaches the database."""
    for (raw, fragment), path in itertools.product(MALFORMED, ("/api/batch/trigger", "/api/batch/config")):
        err = await error(await client.post(path, data=raw, headers={**AUTH, "Content-Type": "application/json"}),
                          400, "invalid_json")
        assert fragment in err["message"], err


async def test_oversized_body_is_413(client: Client) -> None:
    """A body over 64 KiB is a 413 payload_too_large envelope."""
    body = json.dumps({"jobType": "alpha", "params": {"pad": "x" * 70_000}})
    await error(await client.post("/api/batch/trigger", data=body, headers=AUTH), 413, "payload_too_large")


async def test_unknown_routes_and_methods_use_the_envelope(client: Client) -> None:
    """An unknown path is a 404 envelope, a wrong method a 405 envelope with Allow."""
    await error(await client.get("/api/batch/nothing-here"), 404, "not_found")
    await error(await client.get("/api/batch/runs/1/nothing"), 404, "not_found")
    response = await client.get("/api/batch/trigger")
    await error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_check_bind_refuses_a_non_loopback_host_without_a_token() -> None:
    """Loopback hosts need no token; any other address without a token is a ConfigError naming
    BATCHER_API_TOKEN; with a token, or with the API off (port 0), anything goes."""
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        check_bind(ApiSettings(host=host))
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.org", ""):
        with pytest.raises(ConfigError, match="BATCHER_API_TOKEN"):
            check_bind(ApiSettings(host=host))
        check_bind(ApiSettings(host=host, token="t"))
        check_bind(ApiSettings(host=host, port=0))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_daemon_refuses_to_start_on_a_public_address_without_a_token(database_url: str, redis_url: str,
                                                                     tmp_path: Path) -> None:
    """``batcher run`` with BATCHER_API_HOST=0.0.0.0 and no token exits 2 with a message naming
    BATCHER_API_TOKEN, before it binds anything."""
    config = write_config(tmp_path / "batcher.toml", {"synth": {"type": "synthetic", "interval_minutes": 1440}})
    port = _free_port()
    env = batcher_env(database_url, redis_url, config, tmp_path / "data", BATCHER_API_HOST="0.0.0.0",
                      BATCHER_API_PORT=str(port))
    done = subprocess.run([sys.executable, "-m", "batcher", "run"], env=env, cwd=REPO, capture_output=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert b"BATCHER_API_TOKEN" in done.stderr


def test_daemon_exits_2_when_the_api_port_is_taken(database_url: str, redis_url: str, tmp_path: Path) -> None:
    """A port already in use stops the daemon before it schedules anything: exit 2 naming the port."""
    config = write_config(tmp_path / "batcher.toml", {"synth": {"type": "synthetic", "interval_minutes": 1440}})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = batcher_env(database_url, redis_url, config, tmp_path / "data", BATCHER_API_PORT=str(port))
        done = subprocess.run([sys.executable, "-m", "batcher", "run"], env=env, cwd=REPO, capture_output=True,
                              timeout=60)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert f"127.0.0.1:{port}".encode() in done.stderr and b"BATCHER_API_PORT" in done.stderr
