"""OAuth2 against a local fake token server: single-flight, proactive refresh, one retry on 401, both
grants — and a search of every captured log line and error for the tokens, which finds nothing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from batcher import logs
from batcher.context import RunState as Counters  # the runner's own RunAccounting
from batcher.errors import BatcherError, PermanentError
from batcher.http import HttpRuntime, HttpStatusError
from batcher.oauth import OAuth2Credentials, OAuth2TokenProvider
from tests.serving import serve


@pytest.fixture(autouse=True)
def _session_loop_is_current(_session_event_loop: asyncio.AbstractEventLoop) -> None:
    """Run these tests in pytest-asyncio's session loop, where the async fixtures run (guards against a
    conftest fixture leaving another event loop current between tests)."""
    asyncio.set_event_loop(_session_event_loop)


CLIENT_SECRET = "cs-" + uuid.uuid4().hex
REFRESH_TOKEN = "rt-" + uuid.uuid4().hex


@dataclass
class FakeProvider:
    """The fake token server and API: issues tokens, accepts only the current ones, can revoke."""

    expires_in: int = 3600
    issued: list[str] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)
    api_calls: int = 0
    refuse: bool = False

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.forms.append({k: str(v) for k, v in form.items()})
        await asyncio.sleep(0.05)  # slow enough for concurrent callers to pile up
        if self.refuse:
            return web.json_response({"error": "invalid_grant", "refresh_token": form.get("refresh_token")},
                                     status=400)
        tok = "tok-" + uuid.uuid4().hex
        self.issued.append(tok)
        self.valid.add(tok)
        return web.json_response({"access_token": tok, "expires_in": self.expires_in,
                                  "refresh_token": "rt-" + uuid.uuid4().hex, "token_type": "Bearer"})

    async def data(self, request: web.Request) -> web.Response:
        self.api_calls += 1
        auth = request.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in self.valid:
            return web.json_response({"error": "unauthorized", "got": auth}, status=401)
        return web.json_response({"ok": True})

    async def echo(self, request: web.Request) -> web.Response:
        self.api_calls += 1
        auth = request.headers.get("Authorization")
        body = f"bad request; Authorization: {auth}; echo {request.query_string}"
        return web.Response(text=body, status=400)

    async def flaky(self, request: web.Request) -> web.Response:
        return web.Response(text=f"upstream broke for {request.headers.get('Authorization')}", status=503)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeProvider, str]]:
    provider = FakeProvider()
    app = web.Application()
    app.router.add_post("/oauth/token", provider.token)
    app.router.add_get("/data", provider.data)
    app.router.add_get("/echo", provider.echo)
    app.router.add_get("/flaky", provider.flaky)
    async with serve(app) as url:
        yield provider, url




def creds(base: str, grant: str = "refresh_token") -> OAuth2Credentials:
    return OAuth2Credentials(token_url=f"{base}/oauth/token", client_id="client-1",
                             client_secret=CLIENT_SECRET,
                             grant=grant,  # type: ignore[arg-type]
                             refresh_token=REFRESH_TOKEN if grant == "refresh_token" else None)


async def test_concurrent_callers_share_one_refresh(fake: tuple[FakeProvider, str],
                                                    runtime: HttpRuntime) -> None:
    """20 concurrent requests with no token yet cause exactly one token request."""
    provider, base = fake
    oauth = runtime.token_provider(creds(base))
    assert runtime.token_provider(creds(base)) is oauth  # one provider per credential
    client = runtime.client("oauth:test:", accounting=Counters(), cancelled=asyncio.Event(), oauth=oauth)
    results = await asyncio.gather(*(client.get_json(f"{base}/data") for _ in range(20)))
    assert results == [{"ok": True}] * 20
    assert len(provider.forms) == 1
    assert provider.forms[0]["grant_type"] == "refresh_token"
    assert provider.forms[0]["refresh_token"] == REFRESH_TOKEN


async def test_proactive_refresh_before_expiry(fake: tuple[FakeProvider, str], runtime: HttpRuntime) -> None:
    """A token is replaced refresh_early_s before it expires, without waiting for a 401; the rotated
    refresh token is used for the next grant."""
    provider, base = fake
    now = [1000.0]
    oauth = OAuth2TokenProvider(creds(base), runtime, refresh_early_s=60, clock=lambda: now[0])
    first = await oauth.token()
    now[0] += 3600 - 61
    assert await oauth.token() == first
    now[0] += 2  # now 59 s before expiry
    second = await oauth.token()
    assert second != first and len(provider.forms) == 2
    assert provider.forms[1]["refresh_token"] != REFRESH_TOKEN


async def test_401_refreshes_once_and_retries(fake: tuple[FakeProvider, str], runtime: HttpRuntime) -> None:
    """A revoked token gets a 401: one forced refresh (shared by concurrent callers), then success."""
    provider, base = fake
    oauth = runtime.token_provider(creds(base))
    client = runtime.client("oauth:test:", accounting=Counters(), cancelled=asyncio.Event(), oauth=oauth)
    await client.get_json(f"{base}/data")
    provider.valid.clear()  # revoke
    assert await asyncio.gather(*(client.get_json(f"{base}/data") for _ in range(5))) == [{"ok": True}] * 5
    assert len(provider.forms) == 2


async def test_second_401_is_permanent(fake: tuple[FakeProvider, str], runtime: HttpRuntime) -> None:
    """When the refreshed token is rejected too, the request fails with a permanent 401."""
    provider, base = fake
    oauth = runtime.token_provider(creds(base))
    client = runtime.client("oauth:test:", accounting=Counters(), cancelled=asyncio.Event(), oauth=oauth)
    provider.valid = set()
    provider.issued.clear()

    class Never(set[str]):
        def __contains__(self, item: object) -> bool:
            return False

    provider.valid = Never()
    with pytest.raises(HttpStatusError) as info:
        await client.get_json(f"{base}/data")
    assert info.value.status == 401
    assert provider.api_calls == 2


async def test_client_credentials_grant(fake: tuple[FakeProvider, str], runtime: HttpRuntime) -> None:
    """The client_credentials grant posts client id and secret, no refresh token."""
    provider, base = fake
    oauth = runtime.token_provider(creds(base, "client_credentials"))
    assert (await oauth.token()).startswith("tok-")
    assert provider.forms[0]["grant_type"] == "client_credentials"
    assert "refresh_token" not in provider.forms[0]


async def test_no_token_or_secret_in_any_log_or_error(fake: tuple[FakeProvider, str],
                                                      runtime: HttpRuntime) -> None:
    """Refreshes, 401s, a 400 echoing the Authorization header, 503 retries and a refused grant:
    neither the raw structlog events, nor the rendered log stream (stdlib included), nor any error
    message or its chain contains a token, the refresh token or the client secret."""
    provider, base = fake
    stream = io.StringIO()
    errors: list[BaseException] = []
    with _logging_to(stream):
        with capture_logs() as raw_events:
            await _exercise(provider, base, runtime, errors)
        logging.getLogger("aiohttp.client").debug("stdlib line for the bridge check")
        await _exercise(provider, base, runtime, errors)
    secrets = [*provider.issued, CLIENT_SECRET, REFRESH_TOKEN]
    assert len(provider.issued) >= 4 and len(errors) >= 6
    texts = [repr(raw_events), stream.getvalue()]
    for err in errors:
        chain: BaseException | None = err
        while chain is not None:
            texts += [str(chain), repr(chain), repr(chain.args)]
            chain = chain.__cause__ or chain.__context__
    for secret in secrets:
        assert not any(secret in text for text in texts), "a secret leaked"
    assert "http_unauthorized_refreshing" in stream.getvalue()


@contextlib.contextmanager
def _logging_to(stream: io.StringIO) -> Iterator[None]:
    """Route all logging (structlog and stdlib, debug and up) to ``stream`` as JSON, then put the
    session's logging configuration back exactly as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in ("apscheduler", "aiohttp", "asyncpg",
                                                                   "pymongo", "redis")}
    config = structlog.get_config()
    logs.configure_logging("json", "debug", stream=stream)
    try:
        yield
    finally:
        logs.reset_logging()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lib_level in libraries.items():
            logging.getLogger(name).setLevel(lib_level)
        structlog.configure(**config)


async def _exercise(provider: FakeProvider, base: str, runtime: HttpRuntime,
                    errors: list[BaseException]) -> None:
    oauth = runtime.token_provider(creds(base))
    client = runtime.client("oauth:leak:", accounting=Counters(), cancelled=asyncio.Event(), oauth=oauth)
    await client.get_json(f"{base}/data")
    provider.valid.clear()
    await client.get_json(f"{base}/data")
    token = await oauth.token()
    for path in (f"/echo?access_token={token}", "/flaky", f"/flaky?token={token}"):
        try:
            await client.get_json(base + path)
        except BatcherError as exc:
            errors.append(exc)
    provider.refuse = True
    fresh = OAuth2TokenProvider(creds(base), runtime)
    try:
        await fresh.token()
    except PermanentError as exc:
        errors.append(exc)
    provider.refuse = False
    provider.valid.clear()
    provider.issued.append(token)
    try:
        await runtime.client("oauth:leak:", accounting=Counters(), cancelled=asyncio.Event(),
                             oauth=_Fixed(token)).get_json(f"{base}/data")
    except PermanentError as exc:
        errors.append(exc)


class _Fixed:
    """A TokenProvider whose token never changes (so the retried 401 fails)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    async def refresh(self, stale: str) -> str:
        return self._token


def _context(runtime: HttpRuntime, run_id: int) -> Any:
    """A RunContext as the runner builds it, on an HTTP runtime only (no database is touched)."""
    from batcher.context import Context, RunState
    from batcher.models import Services

    services = Services(settings=None, pool=None, database_url="", redis_url="", registry={},  # type: ignore[arg-type]
                        http=runtime)
    run = {"id": run_id, "root_run_id": run_id, "job_name": "j", "attempt": 1, "trigger": "manual", "params": {}}
    return Context(services, run, RunState(), {})


async def test_run_context_http_with_oauth_shares_one_provider_across_runs(
        fake: tuple[FakeProvider, str], runtime: HttpRuntime) -> None:
    """Two concurrent runs asking ``ctx.http(ns, oauth=…)`` for the same credential (equal, not the same
    object) share the process's provider: 10 requests each, one token request in all; a 401 in both runs
    at once causes exactly one more."""
    from batcher import OAuth2Credentials as Public

    provider, base = fake
    assert Public is OAuth2Credentials
    clients = [_context(runtime, n).http("oauth:ctx:", oauth=creds(base)) for n in (1, 2)]
    results = await asyncio.gather(*(c.get_json(f"{base}/data") for c in clients for _ in range(10)))
    assert results == [{"ok": True}] * 20 and len(provider.forms) == 1
    provider.valid.clear()
    await asyncio.gather(*(c.get_json(f"{base}/data") for c in clients))
    assert len(provider.forms) == 2


async def test_invalid_grant_raises_the_credential_message(fake: tuple[FakeProvider, str],
                                                           runtime: HttpRuntime) -> None:
    """A token endpoint answering 400 ``invalid_grant`` raises PermanentError with the credential's
    ``invalid_grant_message`` (or a default saying what to do) — never the body, which here echoes the
    refresh token."""
    provider, base = fake
    provider.refuse = True
    custom = dataclasses.replace(creds(base), invalid_grant_message="create a new refresh token")
    with pytest.raises(PermanentError, match="^create a new refresh token$"):
        await OAuth2TokenProvider(custom, runtime).token()
    with pytest.raises(PermanentError, match="invalid_grant.*revoked or has expired") as info:
        await OAuth2TokenProvider(creds(base), runtime).token()
    assert REFRESH_TOKEN not in str(info.value)


def test_credential_key_holds_no_secret() -> None:
    """The provider key is a hash: neither the client secret nor the refresh token is in it, and two
    refresh tokens of one client are two keys."""
    one = creds("http://t")
    other = dataclasses.replace(one, refresh_token="rt-other")
    assert CLIENT_SECRET not in one.key() and REFRESH_TOKEN not in one.key()
    assert one.key() != other.key() and one.key() == creds("http://t").key()
    assert CLIENT_SECRET not in repr(one) and REFRESH_TOKEN not in repr(one)
