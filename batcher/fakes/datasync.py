"""A realistic fake of the DataSync events API (issue 8): in-process, or ``python -m batcher.fakes.datasync``.

This module owns the fake: a deterministic event stream (:func:`make_event`, unicode and invalid events
included), the ``GET /events`` endpoint with opaque cursors, both envelope shapes, overlapping pages,
gzip, latency and injected faults (429 with ``Retry-After`` and/or ``X-RateLimit-Reset``, 502/503, invalid
envelopes, 500s echoing the Authorization header), a request log with timestamps, and a control API for other processes:

- ``GET /_control/log`` — the request log (JSON list); ``POST /_control/append?n=N`` — N more events;
  ``POST /_control/options`` — a JSON object of :class:`FakeOptions` fields to change.

A cursor encodes the offset of a page's first new event; the page at offset ``o`` serves events
``[o - overlap, o + limit)``, so re-reading the cursor of the last page returns whatever was appended
since. Faults are chosen by the request's number (1-based, ``/events`` requests only), so a run is
reproducible: request ``n`` is a 429 when ``n % rate_limit_every == 0``, else a 502/503 when
``n % error_every == 0``, else an invalid envelope when ``n % bad_envelope_every == 0``.

    async with FakeDataSync(FakeOptions(events=20_000, latency_ms=5)) as fake:
        ...  # fake.url, fake.log, fake.append(100), fake.valid_ids()
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TextIO, get_args

from aiohttp import web

from batcher.fakes.server import FakeServer

Shape = Literal["nested", "flat", "both"]
RateLimitHeaders = Literal["retry-after", "reset", "both"]
_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
_TYPES = ("page_view", "click", "signup", "purchase", "logout")
_LABELS = ("café", "日本語のテキスト", "emoji 🎉🚀", "Ελληνικά", "שלום", "e\u0301 combining", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
           "quote \" and \\ backslash", "line\nbreak\ttab", "plain ascii")
INVALID_KINDS = ("missing id", "bad timestamp", "missing timestamp", "id is a number", "NUL character",
                 "type is a number", "unpaired surrogate", "not an object", "date without time")


@dataclass(frozen=True)
class FakeOptions:
    """How the fake behaves (every field can be changed at run time)."""

    events: int = 1000
    seed: int = 0
    shape: Shape = "nested"  # both: nested plus a stale flat copy (hasMore=false) a client must ignore
    overlap: int = 0  # events of the previous page repeated at the start of each page
    invalid_every: int = 0  # every Nth event is invalid (0: none); kinds cycle through INVALID_KINDS
    latency_ms: float = 0.0
    gzip: bool = False  # compress when the client accepts gzip
    api_key: str = "test-key"
    auth_status: int = 401  # answer to a wrong key: 401 or 403
    max_limit: int = 1000
    rate_limit_every: int = 0
    rate_limit_delay_s: float = 0.2
    rate_limit_headers: RateLimitHeaders = "reset"  # Retry-After has whole seconds only
    error_every: int = 0
    bad_envelope_every: int = 0  # 1: every page (the run must fail)
    echo_auth_next: int = 0  # the next N requests answer echo_auth_status, echoing the Authorization header
    echo_auth_status: int = 500  # (a leak test: the body holds the credential, with and without "Bearer")


def make_event(index: int, *, seed: int = 0, invalid_every: int = 0) -> Any:
    """Event number ``index`` (0-based) of the stream: deterministic, unicode-rich, sometimes invalid."""
    stamp = _BASE_TIME + timedelta(seconds=index * 7, milliseconds=index % 1000)
    formats = (stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               stamp.astimezone(_zone(2)).isoformat(), stamp.replace(tzinfo=None).isoformat(),
               stamp.astimezone(_zone(-5)).isoformat(timespec="seconds"))
    event: dict[str, Any] = {
        "id": f"evt_{seed}_{index:07d}", "type": _TYPES[index % len(_TYPES)],
        "timestamp": formats[index % len(formats)], "accountId": f"acc_{index % 97}",
        "properties": {"n": index, "label": _LABELS[index % len(_LABELS)], "amount": round(index * 1.25, 2),
                       "tags": ["a", "ü", str(index % 3)], "nested": {"ok": index % 2 == 0, "none": None}},
    }
    if index % 11 == 0:
        event["newField"] = {"added": "later", "version": 2}  # fields the docs do not list are kept
    if invalid_every and index % invalid_every == invalid_every - 1:
        return _invalidate(event, (index // invalid_every) % len(INVALID_KINDS))
    return event


def _zone(hours: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


def _invalidate(event: dict[str, Any], kind: int) -> Any:
    name = INVALID_KINDS[kind]
    if name == "missing id":
        event.pop("id")
    elif name == "bad timestamp":
        event["timestamp"] = f"yesterday-{event['properties']['n']}"
    elif name == "missing timestamp":
        event.pop("timestamp")
    elif name == "id is a number":
        event["id"] = event["properties"]["n"]
    elif name == "NUL character":
        event["properties"]["label"] = "before\x00after"
    elif name == "type is a number":
        event["type"] = 42
    elif name == "unpaired surrogate":
        event["properties"]["label"] = "broken \ud800 text"
    elif name == "not an object":
        return f"garbage-{event['properties']['n']}"
    else:
        event["timestamp"] = event["timestamp"][:10]
    return event


def is_valid(index: int, invalid_every: int) -> bool:
    return not (invalid_every and index % invalid_every == invalid_every - 1)


def _dumps(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it as \udXXX, as real APIs do
        text = json.dumps(value, separators=(",", ":"))
    return text


def encode_cursor(offset: int, seed: int) -> str:
    return base64.urlsafe_b64encode(f"ds1|{seed}|{offset}|{offset * 7919 % 10007}".encode()).decode()


def decode_cursor(cursor: str, seed: int) -> int | None:
    try:
        tag, s, offset, check = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        if tag == "ds1" and int(s) == seed and int(check) == int(offset) * 7919 % 10007:
            return int(offset)
    except ValueError:
        pass
    return None


class FakeDataSync(FakeServer):
    """The fake server. ``log`` lists every request: ``t`` (epoch s), ``n``, ``cursor``, ``offset``,
    ``limit``, ``status``, ``first``/``served`` (event indexes), ``has_more``, ``reset_at`` (429s)."""

    def __init__(self, options: FakeOptions | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 echo: TextIO | None = None) -> None:
        self.options = options or FakeOptions()
        self.host, self.port = host, port
        self.log: list[dict[str, Any]] = []
        self._echo = echo  # each answered /events request as a JSON line (the process: stderr)
        self._encoded: list[str] = []
        self._raw: list[Any] = []
        self._requests = 0
        self._runner: web.AppRunner | None = None
        self.append(self.options.events)

    # -- data ------------------------------------------------------------------------------------
    def append(self, n: int) -> None:
        """Add ``n`` events at the end of the stream."""
        o = self.options
        for index in range(len(self._raw), len(self._raw) + n):
            event = make_event(index, seed=o.seed, invalid_every=o.invalid_every)
            self._raw.append(event)
            self._encoded.append(_dumps(event))

    @property
    def events(self) -> list[Any]:
        """Every event served so far, as sent (JSON values)."""
        return self._raw

    def valid_ids(self) -> set[str]:
        return {e["id"] for i, e in enumerate(self._raw) if is_valid(i, self.options.invalid_every)}

    def invalid_events(self) -> list[Any]:
        return [e for i, e in enumerate(self._raw) if not is_valid(i, self.options.invalid_every)]

    def configure(self, **changes: Any) -> None:
        self.options = replace(self.options, **changes)

    # -- server ----------------------------------------------------------------------------------

    def announcement(self) -> dict[str, Any]:
        return {"url": self.url, "events": len(self.events)}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/events", self._events)
        app.router.add_get("/_control/log", self._get_log)
        app.router.add_post("/_control/append", self._post_append)
        app.router.add_post("/_control/options", self._post_options)

    # -- handlers --------------------------------------------------------------------------------
    async def _events(self, request: web.Request) -> web.StreamResponse:
        o = self.options
        self._requests += 1
        entry: dict[str, Any] = {"t": time.time(), "n": self._requests, "cursor": request.query.get("cursor"),
                                 "limit": request.query.get("limit")}
        self.log.append(entry)
        if o.latency_ms:
            await asyncio.sleep(o.latency_ms / 1000)
        response = self._answer(request, entry)
        entry["status"] = response.status
        if self._echo is not None:
            shown = {k: entry.get(k) for k in ("n", "cursor", "limit", "status", "served", "has_more")}
            line = {"at": datetime.fromtimestamp(entry["t"], UTC).isoformat(), "method": request.method,
                    "path": request.path, **shown}
            self._echo.write(json.dumps(line, default=str) + "\n")
            self._echo.flush()
        return response

    def _answer(self, request: web.Request, entry: dict[str, Any]) -> web.Response:
        o, n = self.options, self._requests
        if o.echo_auth_next > 0:
            self.options = replace(o, echo_auth_next=o.echo_auth_next - 1)
            sent = request.headers.get("Authorization", "")
            text = f"error handling request with Authorization: {sent} (key {sent.removeprefix('Bearer ')})"
            return web.Response(status=o.echo_auth_status, text=text)
        if request.headers.get("Authorization") != f"Bearer {o.api_key}":
            return web.json_response({"error": "invalid api key"}, status=o.auth_status)
        if o.rate_limit_every and n % o.rate_limit_every == 0:
            return self._rate_limited(entry)
        if o.error_every and n % o.error_every == 0:
            return web.Response(status=502 if n % 2 else 503, text="upstream hiccup")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return web.json_response({"error": "limit must be a number"}, status=400)
        cursor = request.query.get("cursor")
        offset = 0 if cursor is None else decode_cursor(cursor, o.seed)
        if offset is None or not 1 <= limit <= o.max_limit:
            return web.json_response({"error": "invalid cursor or limit"}, status=400)
        entry["offset"] = offset
        broken = bool(o.bad_envelope_every and n % o.bad_envelope_every == 0)
        body = self._page(offset, limit, entry, broken=broken)
        return self._encode(request, body)

    def _rate_limited(self, entry: dict[str, Any]) -> web.Response:
        o, now = self.options, time.time()
        headers: dict[str, str] = {}
        reset_at = now + o.rate_limit_delay_s
        if o.rate_limit_headers in ("retry-after", "both"):
            seconds = max(1, math.ceil(o.rate_limit_delay_s))
            headers["Retry-After"] = str(seconds)
            reset_at = now + seconds
        if o.rate_limit_headers in ("reset", "both"):
            reset_ms = math.ceil((now + o.rate_limit_delay_s) * 1000)
            headers["X-RateLimit-Reset"] = str(reset_ms)
            reset_at = max(reset_at, reset_ms / 1000)
        entry["reset_at"] = reset_at
        return web.json_response({"error": "rate limited"}, status=429, headers=headers)

    def _page(self, offset: int, limit: int, entry: dict[str, Any], *, broken: bool) -> str:
        o = self.options
        first = max(0, offset - o.overlap) if offset else 0
        end = min(offset + limit, len(self._encoded))
        has_more = end < len(self._encoded)
        cursor = json.dumps(encode_cursor(end, o.seed)) if has_more else "null"
        entry.update(first=first, served=max(end - first, 0), has_more=has_more)
        data = "[" + ",".join(self._encoded[first:end]) + "]"
        more = "true" if has_more else "false"
        if broken:
            return f'{{"data":{data},"pagination":{{"hasMore":true}}}}'
        if o.shape == "flat":
            return f'{{"data":{data},"hasMore":{more},"nextCursor":{cursor}}}'
        nested = f'"pagination":{{"hasMore":{more},"nextCursor":{cursor}}}'
        stale = ',"hasMore":false,"nextCursor":null' if o.shape == "both" else ""
        return f'{{"data":{data},{nested}{stale}}}'

    def _encode(self, request: web.Request, body: str) -> web.Response:
        raw = body.encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self.options.gzip and "gzip" in request.headers.get("Accept-Encoding", ""):
            raw = gzip.compress(raw, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=raw, headers=headers)

    async def _get_log(self, request: web.Request) -> web.Response:
        return web.json_response(self.log)

    async def _post_append(self, request: web.Request) -> web.Response:
        self.append(int(request.query.get("n", "0")))
        return web.json_response({"events": len(self._raw)})

    async def _post_options(self, request: web.Request) -> web.Response:
        changes = await request.json()
        known = {f.name for f in fields(FakeOptions)}
        if not isinstance(changes, Mapping) or set(changes) - known:
            return web.json_response({"error": f"unknown options; known: {sorted(known)}"}, status=400)
        self.configure(**changes)
        return web.json_response(asdict(self.options))


_CHOICES: dict[str, tuple[str, ...]] = {"Shape": get_args(Shape), "RateLimitHeaders": get_args(RateLimitHeaders)}


def _parse_args(argv: list[str] | None) -> tuple[FakeOptions, str, int]:
    parser = argparse.ArgumentParser(prog="python -m batcher.fakes.datasync",
                                     description="A fake DataSync events API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    for f in fields(FakeOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            choices = _CHOICES.get(str(f.type))
            parser.add_argument(flag, type=kind, default=f.default, choices=choices,
                                help=f"default: {f.default}")
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    return FakeOptions(**args), host, port


async def serve(options: FakeOptions, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; the first stdout line is ``{"url": …, "events": …}``; each ``/events``
    request is logged on stderr as a JSON line (the demo's ``datasync.log``)."""
    await FakeDataSync(options, host=host, port=port, echo=sys.stderr).serve_until_signal()


def main(argv: list[str] | None = None) -> None:
    options, host, port = _parse_args(argv)
    asyncio.run(serve(options, host, port))


if __name__ == "__main__":
    main(sys.argv[1:])
