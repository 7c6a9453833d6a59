"""The HTTP client against a real aiohttp server on 127.0.0.1 (aioresponses bypasses the transport):
ingress bytes are the compressed bytes on the wire, resets are retried, a slow read is cancellable."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from batcher.context import RunState as Counters  # the runner's own RunAccounting
from batcher.errors import RunCancelledError
from batcher.http import HttpRuntime
from tests.serving import serve


@pytest.fixture(autouse=True)
def _session_loop_is_current(_session_event_loop: asyncio.AbstractEventLoop) -> None:
    """Run these tests in pytest-asyncio's session loop, where the async fixtures run (guards against a
    conftest fixture leaving another event loop current between tests)."""
    asyncio.set_event_loop(_session_event_loop)


PAYLOAD = {"results": [{"id": i, "name": f"item-{i}", "text": "lorem ipsum " * 20} for i in range(200)]}
RAW = json.dumps(PAYLOAD).encode()
GZIPPED = gzip.compress(RAW)
DEFLATED = zlib.compress(RAW)


def make_app(state: dict[str, int]) -> web.Application:
    async def gzipped(request: web.Request) -> web.Response:
        assert "gzip" in request.headers.get("Accept-Encoding", "")
        return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip",
                                                   "Content-Type": "application/json"})

    async def deflated(request: web.Request) -> web.Response:
        return web.Response(body=DEFLATED, headers={"Content-Encoding": "deflate",
                                                    "Content-Type": "application/json"})

    async def reset_once(request: web.Request) -> web.Response:
        state["reset"] = state.get("reset", 0) + 1
        if state["reset"] == 1:
            assert request.transport is not None
            request.transport.close()  # the connection dies before any response
            await asyncio.sleep(0.05)  # the fake's behaviour: answer nothing on the dead connection
        return web.json_response({"ok": True})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)  # the fake's behaviour: an answer slower than the client's timeout
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/deflate", deflated)
    app.router.add_get("/reset", reset_once)
    app.router.add_get("/slow", slow)
    return app


@pytest.fixture
def state() -> dict[str, int]:
    return {}


@pytest.fixture
async def server(state: dict[str, int]) -> AsyncIterator[str]:
    async with serve(make_app(state), handler_cancellation=True) as url:
        yield url


@pytest.mark.parametrize(("path", "wire"), [("/gzip", len(GZIPPED)), ("/deflate", len(DEFLATED))])
async def test_ingress_counts_compressed_bytes(server: str, runtime: HttpRuntime, path: str,
                                               wire: int) -> None:
    """A compressed response counts its wire size as ingress and still parses to the full payload."""
    counters = Counters()
    client = runtime.client("bytes:test:", accounting=counters, cancelled=asyncio.Event())
    assert await client.get_json(server + path) == PAYLOAD
    assert counters.ingress_bytes == wire < len(RAW)
    assert counters.api_calls == 1


async def test_connection_reset_is_retried_and_counted(server: str, runtime: HttpRuntime,
                                                       state: dict[str, int]) -> None:
    """A connection closed by the server is retried; both attempts count as API calls."""
    counters = Counters()
    client = runtime.client("bytes:test:", accounting=counters, cancelled=asyncio.Event())
    assert await client.get_json(server + "/reset") == {"ok": True}
    assert state["reset"] == 2
    assert counters.api_calls == 2


async def test_cancel_interrupts_a_slow_response(server: str, runtime: HttpRuntime) -> None:
    """A request waiting on a slow server stops with RunCancelledError when the run is cancelled."""
    cancelled = asyncio.Event()
    client = runtime.client("bytes:test:", accounting=Counters(), cancelled=cancelled)
    asyncio.get_running_loop().call_later(0.2, cancelled.set)
    started = time.monotonic()
    with pytest.raises(RunCancelledError):
        await client.get_json(server + "/slow")
    assert time.monotonic() - started < 3
