"""A fake HubSpot CRM API (issue 17): in-process, or ``python -m batcher.fakes.hubspot``.

Shapes follow HubSpot's public v3 reference: records are ``{"id", "properties", "createdAt", "updatedAt",
"archived"}`` with string property values; pages carry ``paging.next.after`` (a string) when more remain.

- ``GET /crm/v3/objects/{type}?limit&after&properties&archived`` — the list endpoint, ordered by id, no
  result cap, ``limit`` ≤ 100; a URL longer than ``max_url_chars`` answers 414.
- ``POST /crm/v3/objects/{type}/search`` — ``filterGroups`` (≤ 5 groups × ≤ 6 filters, ORed groups of
  ANDed filters: EQ NEQ GT GTE LT LTE IN NOT_IN HAS_PROPERTY; dates as epoch-millisecond strings),
  ``sorts`` (at most ONE: HubSpot allows one sort rule), ``limit`` ≤ 200, ``after`` (an offset string).
  Asking for results past the 10,000th answers 400, as HubSpot does. Ties of the sort key come back in a
  scrambled (not id) order, so a client cannot rely on an order HubSpot does not promise.
- ``POST /crm/v3/objects/{type}/batch/read`` — ``{"inputs": [{"id"}], "properties"}``, ≤ 100 inputs.
- ``GET /crm/v3/properties/{type}`` — property discovery; ``GET /crm/v3/schemas`` — custom objects.
- ``GET /events/v3/events?eventType&occurredAfter&occurredBefore&after&limit&sort`` — event occurrences
  (``sort=occurredAt``: oldest first; otherwise newest first).
- Faults: 401 for a wrong or revoked token; 429 with HubSpot's body (``policyName`` ``TEN_SECONDLY_ROLLING``
  every ``rate_limit_every`` requests, ``DAILY`` for every request after ``daily_limit`` requests); 502/503
  every ``error_every`` requests. Searches carry no rate-limit headers, like HubSpot's.

The contacts' modification property is ``lastmodifieddate``, the other types' ``hs_lastmodifieddate``.
Record ``i`` (ids 1…n) was modified at ``BASE_MS + 37·i`` ms, except a block of ``tie_block`` records
starting at id ``tie_start`` that share one timestamp. :meth:`FakeHubSpot.touch` modifies records.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from batcher.fakes.hubspot_search import compile_filter, lower_bound, search_problem, stamp_property
from batcher.fakes.server import FakeServer

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SEARCH_CAP = 10_000
STANDARD = ("contacts", "companies", "deals", "tickets")
_BASE_PROPS = ("hs_object_id", "createdate", "name", "email", "phone", "city", "lifecyclestage")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class FakeOptions:
    """How the fake behaves (tests change it with :meth:`FakeHubSpot.configure`)."""

    records: dict[str, int] = field(default_factory=lambda: {"contacts": 1000})
    custom_objects: dict[str, int] = field(default_factory=dict)  # name -> records (type id 2-<n>)
    tie_start: int = 0  # first id of the block sharing one timestamp (0: none)
    tie_block: int = 0
    extra_properties: int = 0  # long-named custom properties per type (to force chunked requests)
    access_token: str = "pat-test-token"
    revoked: bool = False
    # OAuth2 app: POST /oauth/v1/token exchanges this refresh token for ``access_token``
    client_id: str = "hubspot-app"
    client_secret: str = "hubspot-app-secret"
    refresh_token: str = "hubspot-refresh-token"
    refresh_revoked: bool = False
    rate_limit_every: int = 0
    daily_limit: int = 0  # 0: none; else every request after this many answers 429 DAILY
    error_every: int = 0
    max_url_chars: int = 4096
    events: dict[str, int] = field(default_factory=dict)  # event type -> occurrences
    latency_ms: float = 0.0


class FakeHubSpot(FakeServer):
    """The fake server; ``log`` lists every request (``t``, ``n``, ``kind``, ``type``, ``status``,
    ``served``, ``offset``)."""

    def __init__(self, options: FakeOptions | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.options = options or FakeOptions()
        self.host, self.port = host, port
        self.log: list[dict[str, Any]] = []
        self.token_requests = 0
        self.objects: dict[str, dict[int, dict[str, Any]]] = {}
        self.type_ids: dict[str, str] = {}  # custom object name -> objectTypeId
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.clock_ms = BASE_MS + 10 ** 9
        self._index: dict[str, list[tuple[int, str, int]]] = {}
        self._runner: web.AppRunner | None = None
        self._build()

    # -- data ------------------------------------------------------------------------------------
    def _build(self) -> None:
        o = self.options
        for name, count in o.records.items():
            self._create(name, count)
        for n, (name, count) in enumerate(o.custom_objects.items(), 1):
            self.type_ids[name] = f"2-{1000 + n}"
            self._create(name, count)
        for event_type, count in o.events.items():
            self.events[event_type] = [
                {"objectType": "CONTACT", "objectId": str(1 + i % 50), "eventType": event_type,
                 "occurredAt": iso(BASE_MS + 1000 * i), "id": f"{event_type}-{i:06d}",
                 "properties": {"hs_url": f"https://example.com/{i}", "n": str(i)}}
                for i in range(count)]

    def _create(self, object_type: str, count: int) -> None:
        o = self.options
        table = self.objects.setdefault(object_type, {})
        for i in range(len(table) + 1, len(table) + count + 1):
            tied = o.tie_block and o.tie_start <= i < o.tie_start + o.tie_block
            ms = BASE_MS + 37 * (o.tie_start if tied else i)
            props = {p: f"{p}-{i}" for p in _BASE_PROPS}
            props.update({"hs_object_id": str(i), "createdate": iso(BASE_MS + 37 * i),
                          stamp_property(object_type): iso(ms)})
            for k in range(o.extra_properties):
                props[self._extra(k)] = f"x{k}-{i}"
            table[i] = {"id": i, "ms": ms, "created": BASE_MS + 37 * i, "archived": False, "props": props}
        self._index.pop(object_type, None)

    @staticmethod
    def _extra(k: int) -> str:
        return f"custom_property_with_a_rather_long_internal_name_{k:03d}"

    def property_names(self, object_type: str) -> list[str]:
        names = [*_BASE_PROPS, stamp_property(object_type)]
        return names + [self._extra(k) for k in range(self.options.extra_properties)]

    def configure(self, **changes: Any) -> None:
        self.options = replace(self.options, **changes)

    def touch(self, object_type: str, ids: list[int], *, change: bool = True, at_ms: int | None = None) -> None:
        """Modify records now (``change=False``: a new modification time, same values)."""
        for i in ids:
            self.clock_ms += 1
            record = self.objects[object_type][i]
            record["ms"] = at_ms if at_ms is not None else self.clock_ms
            record["props"][stamp_property(object_type)] = iso(record["ms"])
            if change:
                record["props"]["name"] = f"name-{i}-changed-at-{record['ms']}"
        self._index.pop(object_type, None)

    def archive(self, object_type: str, ids: list[int]) -> None:
        for i in ids:
            self.objects[object_type][i]["archived"] = True
        self._index.pop(object_type, None)

    def add(self, object_type: str, count: int) -> None:
        self._create(object_type, count)

    def live(self, object_type: str) -> dict[int, dict[str, Any]]:
        return {i: r for i, r in self.objects[object_type].items() if not r["archived"]}

    def _by_time(self, object_type: str) -> list[tuple[int, str, int]]:
        """Live records sorted by (modification ms, scrambled id): ties are not in id order."""
        if object_type not in self._index:
            rows = [(r["ms"], hashlib.md5(str(i).encode()).hexdigest()[:8], i)
                    for i, r in self.objects[object_type].items() if not r["archived"]]
            self._index[object_type] = sorted(rows)
        return self._index[object_type]

    def _record(self, object_type: str, i: int, wanted: list[str] | None) -> dict[str, Any]:
        r = self.objects[object_type][i]
        props = r["props"]
        keys = ["hs_object_id", "createdate", stamp_property(object_type)] + [p for p in wanted or [] if p in props]
        out = {"id": str(i), "properties": {k: props[k] for k in keys}, "createdAt": iso(r["created"]),
               "updatedAt": iso(r["ms"]), "archived": r["archived"]}
        if r["archived"]:
            out["archivedAt"] = iso(r["ms"])
        return out

    # -- server ----------------------------------------------------------------------------------

    def announcement(self) -> dict[str, Any]:
        return {"url": self.url, "access_token": self.options.access_token}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/crm/v3/objects/{type}", self._list)
        app.router.add_post("/crm/v3/objects/{type}/search", self._search)
        app.router.add_post("/crm/v3/objects/{type}/batch/read", self._batch_read)
        app.router.add_get("/crm/v3/properties/{type}", self._properties)
        app.router.add_get("/crm/v3/schemas", self._schemas)
        app.router.add_get("/events/v3/events", self._events)
        app.router.add_post(TOKEN_PATH, self._token)

    def middlewares(self) -> list[Any]:
        return [self._gate]

    async def _token(self, request: web.Request) -> web.Response:
        """HubSpot's OAuth token endpoint (refresh_token grant, form-encoded)."""
        o = self.options
        form = await request.post()
        self.token_requests += 1
        if form.get("client_id") != o.client_id or form.get("client_secret") != o.client_secret:
            return web.json_response({"status": "BAD_CLIENT_ID", "message": "missing or unknown client id"},
                                     status=400)
        if o.refresh_revoked or form.get("grant_type") != "refresh_token" \
                or form.get("refresh_token") != o.refresh_token:
            return web.json_response({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token",
                                      "correlationId": "0f4d7c1e-6c55-4d7a-9f57-3c0b1e1f2a9b"}, status=400)
        return web.json_response({"token_type": "bearer", "refresh_token": o.refresh_token,
                                  "access_token": o.access_token, "expires_in": 1800})

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Logging, latency, auth and injected faults, before any endpoint."""
        o = self.options
        entry: dict[str, Any] = {"t": time.time(), "n": len(self.log) + 1, "method": request.method,
                                 "path": request.path, "type": request.match_info.get("type")}
        self.log.append(entry)
        if o.latency_ms:
            await asyncio.sleep(o.latency_ms / 1000)
        response = self._fault(request, entry["n"]) if request.path != TOKEN_PATH else None
        if response is None:
            request["log"] = entry
            response = await handler(request)
        entry["status"] = response.status
        return response

    def _fault(self, request: web.Request, n: int) -> web.Response | None:
        o = self.options
        if o.revoked or request.headers.get("Authorization") != f"Bearer {o.access_token}":
            return _error(401, "Authentication credentials not found. This API supports OAuth 2.0 "
                               "authentication and you can find more details at https://developers.hubspot.com/",
                          category="INVALID_AUTHENTICATION")
        if o.daily_limit and n > o.daily_limit:
            return _rate_limited("DAILY", "You have reached your daily limit.")
        if o.rate_limit_every and n % o.rate_limit_every == 0:
            return _rate_limited("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.")
        if o.error_every and n % o.error_every == 0:
            return web.Response(status=502 if n % 2 else 503, text="bad gateway")
        if len(str(request.url)) > o.max_url_chars:
            return web.Response(status=414, text="URI Too Long")
        return None

    def _type(self, request: web.Request) -> str | None:
        name = request.match_info["type"]
        for custom, type_id in self.type_ids.items():
            if name == type_id:
                return custom
        return name if name in self.objects else None

    async def _list(self, request: web.Request) -> web.Response:
        object_type = self._type(request)
        if object_type is None:
            return _error(400, "Unable to infer object type", category="VALIDATION_ERROR")
        q = request.query
        limit = int(q.get("limit", "10"))
        if not 1 <= limit <= 100:
            return _error(400, "limit must be between 1 and 100", category="VALIDATION_ERROR")
        archived = q.get("archived", "false") == "true"
        start = int(q.get("after", "0") or 0)
        wanted = [p for p in q.get("properties", "").split(",") if p]
        ids = sorted(i for i, r in self.objects[object_type].items() if r["archived"] == archived and i > start)
        page = ids[:limit]
        body: dict[str, Any] = {"results": [self._record(object_type, i, wanted) for i in page]}
        if len(ids) > limit:
            body["paging"] = {"next": {"after": str(page[-1]), "link": f"?after={page[-1]}"}}
        request["log"].update(kind="archived" if archived else "list", served=len(page))
        return web.json_response(body)

    async def _search(self, request: web.Request) -> web.Response:
        object_type = self._type(request)
        body = await request.json()
        problem = None if object_type else "Unable to infer object type"
        problem = problem or search_problem(body)
        if problem:
            return _error(400, problem, category="VALIDATION_ERROR")
        assert object_type is not None
        limit, offset = int(body.get("limit", 10)), int(body.get("after") or 0)
        request["log"].update(kind="search", offset=offset)
        if offset + limit > SEARCH_CAP:
            return _error(400, "There was a problem with the request.", category="VALIDATION_ERROR")
        matches = self._matching(object_type, body)
        page = matches[offset:offset + limit]
        out: dict[str, Any] = {"total": len(matches),
                               "results": [self._record(object_type, i, body.get("properties")) for i in page]}
        if offset + limit < len(matches):
            out["paging"] = {"next": {"after": str(offset + limit), "link": "?after=" + str(offset + limit)}}
        request["log"].update(served=len(page))
        return web.json_response(out)

    def _matching(self, object_type: str, body: dict[str, Any]) -> list[int]:
        groups = [[compile_filter(f, object_type) for f in g.get("filters", [])] for g in body.get("filterGroups", [])]
        records = self.objects[object_type]
        sorts = body.get("sorts") or []
        key = sorts[0].get("propertyName") if sorts else None
        if key == "hs_object_id":
            order = sorted(i for i, r in records.items() if not r["archived"])
        else:
            rows = self._by_time(object_type)
            lower = lower_bound(groups_raw=body.get("filterGroups", []), object_type=object_type)
            order = [i for _, _, i in rows[bisect_left(rows, (lower, "", 0)):]]
        if sorts and sorts[0].get("direction") == "DESCENDING":
            order.reverse()
        if not groups:
            return order
        return [i for i in order if any(all(f(records[i]) for f in g) for g in groups)]

    async def _batch_read(self, request: web.Request) -> web.Response:
        object_type = self._type(request)
        body = await request.json()
        inputs = body.get("inputs", [])
        if object_type is None or len(inputs) > 100:
            return _error(400, "at most 100 inputs", category="VALIDATION_ERROR")
        table = self.objects[object_type]
        found = [int(x["id"]) for x in inputs if int(x["id"]) in table]
        request["log"].update(kind="batch_read", served=len(found))
        return web.json_response({"status": "COMPLETE", "results": [
            self._record(object_type, i, body.get("properties")) for i in found]})

    async def _properties(self, request: web.Request) -> web.Response:
        object_type = self._type(request)
        if object_type is None:
            return _error(400, "Unable to infer object type", category="VALIDATION_ERROR")
        request["log"].update(kind="properties")
        return web.json_response({"results": [
            {"name": n, "label": n.title(), "type": "string", "fieldType": "text", "groupName": "info",
             "hidden": False, "calculated": False} for n in self.property_names(object_type)]})

    async def _schemas(self, request: web.Request) -> web.Response:
        request["log"].update(kind="schemas")
        return web.json_response({"results": [
            {"id": type_id.split("-")[1], "objectTypeId": type_id, "name": name,
             "fullyQualifiedName": f"p12345_{name}", "labels": {"singular": name, "plural": name},
             "primaryDisplayProperty": "name", "archived": False,
             "properties": [{"name": n, "type": "string"} for n in self.property_names(name)]}
            for name, type_id in self.type_ids.items()]})

    async def _events(self, request: web.Request) -> web.Response:
        q = request.query
        occurrences = self.events.get(q.get("eventType", ""), [])
        after_ms = _parse_time(q["occurredAfter"]) if "occurredAfter" in q else None
        before_ms = _parse_time(q["occurredBefore"]) if "occurredBefore" in q else None
        rows = [e for e in occurrences if (after_ms is None or _parse_time(e["occurredAt"]) > after_ms)
                and (before_ms is None or _parse_time(e["occurredAt"]) < before_ms)]
        rows.sort(key=lambda e: (e["occurredAt"], e["id"]), reverse=q.get("sort") != "occurredAt")
        start, limit = int(q.get("after", "0") or 0), int(q.get("limit", "20"))
        page = rows[start:start + limit]
        body: dict[str, Any] = {"results": page}
        if start + limit < len(rows):
            body["paging"] = {"next": {"after": str(start + limit)}}
        request["log"].update(kind="events", served=len(page))
        return web.json_response(body)


def _parse_time(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


TOKEN_PATH = "/oauth/v1/token"


def _error(status: int, message: str, *, category: str) -> web.Response:
    return web.json_response({"status": "error", "message": message, "correlationId":
                              "8c1a7a57-5ae4-4a5f-9e08-3b8e0ce0f4a1", "category": category}, status=status)


def _rate_limited(policy: str, message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message, "errorType": "RATE_LIMIT",
                              "correlationId": "d9f1c7a0-6f5b-4bb4-9e9b-2f1f9d0c3a11", "policyName": policy,
                              "groupName": "publicapi"}, status=429)


async def serve(options: FakeOptions, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; the first stdout line is ``{"url": …, "access_token": …}``."""
    await FakeHubSpot(options, host=host, port=port).serve_until_signal()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batcher.fakes.hubspot", description="A fake HubSpot CRM API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--companies", type=int, default=0)
    parser.add_argument("--tie-block", type=int, default=0, help="records sharing one timestamp")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    records = {"contacts": args.contacts, **({"companies": args.companies} if args.companies else {})}
    options = FakeOptions(records=records, tie_start=10 if args.tie_block else 0, tie_block=args.tie_block,
                          latency_ms=args.latency_ms)
    asyncio.run(serve(options, args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
