"""Property tests of the admin API with schemathesis 4 against a live daemon (``python -m batcher run``
with only a ``synthetic`` job, the API on a free loopback port, a token set): ~25 generated requests per
operation of /api/openapi.json; no 5xx, and every response conforms to the document (status code,
content type, headers, body schema). An egress guard keeps every connection on loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode, checks

from tests.e2e.procs import Proc, batcher_env, write_config
from tests.polling import wait_for_sync

TOKEN = "schemathesis-token-0123456789"
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance, checks.negative_data_rejection]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loopback_only(address: Any) -> None:
    """Egress guard: refuse any TCP/UDP connection that is not to a loopback address."""
    if isinstance(address, tuple) and not ipaddress.ip_address(address[0]).is_loopback:
        raise AssertionError(f"egress guard: connection to {address[0]} refused (loopback only)")


@pytest.fixture(autouse=True)
def egress_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every socket.connect of this process during a test must target loopback (AF_UNIX is fine)."""
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _loopback_only(address)
        original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def live_daemon(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real daemon with the API on 127.0.0.1:<free port>; yields its base URL; SIGTERM at the end."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    config = write_config(tmp / "batcher.toml", {"synth": {"type": "synthetic", "interval_minutes": 1440,
                                                           "params": {"records": 5}}})
    port = _free_port()
    env = batcher_env(database_url, redis_url, config, tmp / "data", BATCHER_API_PORT=str(port),
                      BATCHER_API_HOST="127.0.0.1", BATCHER_API_TOKEN=TOKEN)
    proc = Proc(["run"], env, Path(tmp / "daemon.log"))
    try:
        proc.wait_event("api_listening", timeout=60)
        yield f"http://127.0.0.1:{port}"
        proc.signal(15)
        assert proc.wait(30) == 0
    finally:
        proc.close()


@pytest.fixture(scope="module")
def live_schema(live_daemon: str) -> Any:
    """The daemon's own /api/openapi.json, loaded by schemathesis, targeting the daemon only."""
    assert urlsplit(live_daemon).hostname == "127.0.0.1"
    wait_for_sync(lambda: requests.get(f"{live_daemon}/healthz", timeout=5).status_code == 200, 30, 0.1,
                  what="the daemon's loop ticking")
    loaded = schemathesis.openapi.from_url(f"{live_daemon}/api/openapi.json")
    # Both valid and schema-violating requests; strings may hold NUL (PostgreSQL rejects it: must be a 400).
    loaded.config.generation.update(modes=list(GenerationMode), allow_x00=True)
    return loaded


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi_document(case: Any, live_daemon: str) -> None:
    """Generated requests (positive data, ~25 per operation) never get a 5xx, and every answer matches
    the document. Mutations carry the token, so they reach validation and the database."""
    assert urlsplit(live_daemon).hostname == "127.0.0.1"
    response = case.call_and_validate(base_url=live_daemon, headers={"Authorization": f"Bearer {TOKEN}"},
                                      checks=CHECKS, timeout=30)
    assert urlsplit(response.request.url).hostname == "127.0.0.1"


def test_the_egress_guard_refuses_non_loopback_addresses() -> None:
    """The guard itself: a connection to a non-loopback address fails before any packet leaves."""
    with socket.socket() as sock, pytest.raises(AssertionError, match="egress guard"):
        sock.connect(("192.0.2.1", 80))
