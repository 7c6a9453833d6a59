"""A fake processing service for the agent batch processor (issue 19): in-process, or
``python -m batcher.fakes.agent``.

- ``POST /requests`` — ``{template, input, user_id?, tenant_id?}`` with ``Authorization: Bearer <api_key>``
  → ``{"output": {...}}``. The output is deterministic (:func:`expected_output`), so tests can assert on
  exact result rows. ``input["key"]`` names the item (``"batch"`` when absent).
- Behaviour (:class:`AgentOptions`, changeable at run time): ``latency_ms`` per request; ``fail_items``
  (item key → how many of its first requests answer 500); ``error_every`` (every Nth request is a 500);
  ``rate_limit_every`` (every Nth request is a 429 with ``Retry-After: 0``); a wrong key is a 401.
- Counts: ``counts`` (item key → requests received, throttled and failed ones included) and ``ok_counts``
  (item key → requests answered 200); ``GET /_control/counts`` returns both, ``POST /_control/options``
  changes options, ``POST /_control/reset`` clears the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from aiohttp import web

from batcher.fakes.server import FakeServer


@dataclass(frozen=True)
class AgentOptions:
    """How the fake behaves (every field can be changed at run time)."""

    api_key: str = "agent-key"
    latency_ms: float = 0.0
    fail_items: dict[str, int] = field(default_factory=dict)
    error_every: int = 0
    rate_limit_every: int = 0


def expected_output(template: str, item_input: Any, user_id: str | None = None) -> dict[str, Any]:
    """What the fake answers for a request (the handler stores it as the result's ``output``)."""
    key = item_input.get("key", "batch") if isinstance(item_input, dict) else "batch"
    size = len(item_input.get("items", ())) if isinstance(item_input, dict) else 0
    out: dict[str, Any] = {"text": f"{template}/{key}", "items": size}
    if user_id is not None:
        out["for"] = user_id
    return out


class FakeAgent(FakeServer):
    """The fake server; ``log`` lists every request body with its answer status."""

    def __init__(self, options: AgentOptions | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.options = options or AgentOptions()
        self.host, self.port = host, port
        self.counts: Counter[str] = Counter()
        self.ok_counts: Counter[str] = Counter()
        self.log: list[dict[str, Any]] = []
        self._requests = 0
        self._runner: web.AppRunner | None = None

    def configure(self, **changes: Any) -> None:
        self.options = replace(self.options, **changes)

    def reset(self) -> None:
        self.counts.clear()
        self.ok_counts.clear()
        self.log.clear()
        self._requests = 0


    backlog = 1024

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/requests", self._request)
        app.router.add_get("/_control/counts", self._get_counts)
        app.router.add_post("/_control/options", self._post_options)
        app.router.add_post("/_control/reset", self._post_reset)

    async def _request(self, request: web.Request) -> web.Response:
        o = self.options
        if o.latency_ms:
            await asyncio.sleep(o.latency_ms / 1000)
        if request.headers.get("Authorization") != f"Bearer {o.api_key}":
            return web.json_response({"error": "invalid api key"}, status=401)
        body = await request.json()
        item_input = body.get("input")
        key = str(item_input.get("key", "batch")) if isinstance(item_input, dict) else "batch"
        self.counts[key] += 1
        self._requests += 1
        status = self._fault(key)
        self.log.append({"body": body, "status": status})
        if status == 429:
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "0"})
        if status != 200:
            return web.json_response({"error": "backend error"}, status=status)
        self.ok_counts[key] += 1
        return web.json_response({"output": expected_output(str(body.get("template")), item_input,
                                                            body.get("user_id"))})

    def _fault(self, key: str) -> int:
        o, n = self.options, self._requests
        if o.rate_limit_every and n % o.rate_limit_every == 0:
            return 429
        if self.counts[key] <= o.fail_items.get(key, 0):
            return 500
        if o.error_every and n % o.error_every == 0:
            return 500
        return 200

    async def _get_counts(self, request: web.Request) -> web.Response:
        return web.json_response({"counts": dict(self.counts), "ok_counts": dict(self.ok_counts)})

    async def _post_options(self, request: web.Request) -> web.Response:
        changes = await request.json()
        known = {f.name for f in fields(AgentOptions)}
        if not isinstance(changes, dict) or set(changes) - known:
            return web.json_response({"error": f"unknown options; known: {sorted(known)}"}, status=400)
        self.configure(**changes)
        return web.json_response(asdict(self.options))

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({})


async def serve(options: AgentOptions, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; the first stdout line is ``{"url": …}``."""
    await FakeAgent(options, host=host, port=port).serve_until_signal()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batcher.fakes.agent",
                                     description="A fake processing service for agent_batch jobs.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--options", default="{}", help="AgentOptions fields as a JSON object")
    args = parser.parse_args(argv)
    asyncio.run(serve(AgentOptions(**json.loads(args.options)), args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
