"""The ``hubspot`` handler: CRM objects (standard and custom), archived records and events (issue 17).

Streams (all job-scoped: a backfill window gets its own run-scoped cursors from the runtime):

- ``objects`` → ``hubspot_objects`` (``update_if_changed``; rows inserted or really changed count as
  ``items_updated``). Cursor: ``{object_type: {"list_started", "list_after"} | {"ts", "id", "tie"}}`` —
  the first sync of a type pages the list endpoint, then every run searches from the last fully read
  ``(timestamp, id)``; see :mod:`handlers.hubspot_crm` for the keyset rules past the 10,000 cap.
- ``archived`` → the same table's ``archived``/``archived_at``. Cursor: ``{object_type: last scan ms}``.
- ``events`` → ``hubspot_events`` (``ignore``). Cursor: ``{event_type: {"ms", "ids"}}`` — the last
  occurrence time read and the ids read at it; the next query asks ``occurredAfter`` = that time − 1 ms
  and drops those ids.

A backfill (``start``/``end`` dates, inclusive) searches the window only: no list, no archived scan.
Auth, namespaces and HubSpot's errors (DAILY 429, 401): :mod:`handlers.hubspot_api`.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from batcher import NO_CHECKPOINT, Batch, Handler, HandlerParams, Rejected, RunContext, Secret, Stream
from handlers.hubspot_api import RATE_LIMITS, HubSpotApi, open_api
from handlers.hubspot_crm import (
    ObjectType,
    SearchCursor,
    archived_row,
    chunk_properties,
    from_ms,
    list_pages,
    parse_ms,
    search_pages,
    stamp_property,
)

OBJECTS, ARCHIVED, EVENTS = "objects", "archived", "events"
DAY_MS = 86_400_000


class HubSpotParams(HandlerParams):
    """Auth: ``access_token`` (a private app's token), or — once batcher's OAuth2 support is wired — the
    refresh credentials ``client_id``, ``client_secret``, ``refresh_token`` and ``token_url``."""

    base_url: str = "https://api.hubapi.com"
    access_token: Secret | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    refresh_token: Secret | None = None
    token_url: str = "https://api.hubapi.com/oauth/v1/token"
    objects: tuple[str, ...] = ("contacts", "companies", "deals", "tickets")
    custom_objects: bool = False
    properties: Literal["all"] | dict[str, tuple[str, ...]] = "all"
    events: tuple[str, ...] = ()
    start: date | None = None
    end: date | None = None
    archived_every_hours: float = Field(24.0, ge=0)
    settle_seconds: int = Field(60, ge=0)
    page_size: int = Field(200, ge=1, le=200)
    events_page_size: int = Field(100, ge=1, le=100)
    properties_chunk_chars: int = Field(2000, ge=100)
    account_timezone: str = "UTC"
    portal_id: str | None = None
    pause_seconds: float = Field(10.0, ge=0)
    search_pause_seconds: float = Field(1.0, ge=0)

    @field_validator("base_url", "token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("account_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        ZoneInfo(value)  # raises (a ValueError) for an unknown zone
        return value

    @model_validator(mode="after")
    def _auth_and_window(self) -> HubSpotParams:
        oauth = (self.client_id, self.client_secret, self.refresh_token)
        if self.access_token is None and not all(oauth):
            raise ValueError("give access_token (access_token_env), or client_id, client_secret and "
                             "refresh_token")
        if (self.start is None) != (self.end is None) or (self.start and self.end and self.start > self.end):
            raise ValueError("start and end go together, start <= end")
        return self


def _objects_stream() -> Stream:
    return Stream(name=OBJECTS, table="hubspot_objects", key_columns=("object_type", "id"),
                  value_columns=("properties", "created_at", "updated_at", "archived"),
                  conflict="update_if_changed", bookkeeping_columns=("synced_at",),
                  json_columns=("properties",), count_written_as_updated=True)


class HubSpotHandler(Handler):
    type = "hubspot"
    display_name = "HubSpot CRM"
    Params = HubSpotParams
    streams = (
        _objects_stream(),
        Stream(name=ARCHIVED, table="hubspot_objects", key_columns=("object_type", "id"),
               value_columns=("archived", "archived_at"), conflict="update_if_changed",
               bookkeeping_columns=("synced_at",), count_written_as_updated=True),
        Stream(name=EVENTS, table="hubspot_events", key_columns=("id",),
               value_columns=("event_type", "object_type", "object_id", "occurred_at", "properties"),
               conflict="ignore", bookkeeping_columns=("ingested_at",), json_columns=("properties",)),
    )
    default_interval_minutes = 15
    accepts_windows = True
    default_rate_limits = RATE_LIMITS

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        p: HubSpotParams = params
        api = open_api(ctx, p)
        sync = ObjectSync(ctx, api, p)
        for kind in await object_types(api, p):
            async for batch in sync.sync(kind):
                yield batch
        async for batch in sync_events(ctx, api, p):
            yield batch


async def object_types(api: HubSpotApi, p: HubSpotParams) -> list[ObjectType]:
    """The types to sync with their property chunks (discovered unless listed in ``properties``)."""
    kinds: list[tuple[ObjectType, list[str] | None]] = [(ObjectType(n, n), None) for n in p.objects]
    if p.custom_objects:
        schemas = await api.get("/crm/v3/schemas")
        for schema in (schemas or {}).get("results", []):
            names = [str(x["name"]) for x in schema.get("properties", []) if isinstance(x, dict) and "name" in x]
            kinds.append((ObjectType(str(schema["name"]), str(schema["objectTypeId"])), names or None))
    for kind, known in kinds:
        names = list(p.properties.get(kind.name, ())) if isinstance(p.properties, dict) else []
        if not names:
            names = known or await discover_properties(api, kind)
        kind.chunks = chunk_properties(names, kind.stamp, p.properties_chunk_chars)
    return [kind for kind, _ in kinds]


async def discover_properties(api: HubSpotApi, kind: ObjectType) -> list[str]:
    body = await api.get(f"/crm/v3/properties/{kind.path}")
    return [str(x["name"]) for x in (body or {}).get("results", []) if isinstance(x, dict) and "name" in x]


class ObjectSync:
    """Batches of one run's object types; holds the ``objects`` and ``archived`` cursors (all types)."""

    def __init__(self, ctx: RunContext, api: HubSpotApi, p: HubSpotParams) -> None:
        self.ctx, self.api, self.p = ctx, api, p
        self.cursors: dict[str, Any] = dict(ctx.checkpoint(OBJECTS) or {})
        self.scans: dict[str, Any] = dict(ctx.checkpoint(ARCHIVED) or {})
        self.now_ms = int(time.time() * 1000)
        self.upper = self.now_ms - p.settle_seconds * 1000
        self.done = 0

    def _batch(self, key: str, rows: list[Any], rejected: list[Rejected], checked: int, cursor: Any) -> Batch:
        self.cursors[key] = cursor
        self.done += checked
        self.ctx.report_progress(done=self.done)
        return Batch(stream=OBJECTS, records=rows, rejected=rejected, items_checked=checked,
                     checkpoint=dict(self.cursors))

    async def sync(self, kind: ObjectType) -> AsyncIterator[Batch]:
        if self.p.start is not None and self.p.end is not None:
            async for batch in self._window(kind, self.p.start, self.p.end):
                yield batch
            return
        state = self.cursors.get(kind.name)
        if state is None or "list_started" in state:
            async for batch in self._list(kind, state or {"list_started": self.now_ms}):
                yield batch
        else:
            async for batch in self._search(kind, SearchCursor.from_json(state), self.upper):
                yield batch
        async for batch in self._archived(kind):
            yield batch

    async def _window(self, kind: ObjectType, start: date, end: date) -> AsyncIterator[Batch]:
        """Search ``[start, end]`` (whole UTC days). Its cursor has its own key (``window:<type>``, dropped
        at the end), so a window run outside a backfill chain never moves the incremental cursor."""
        key, upper = f"window:{kind.name}", min(self.upper, _day_ms(end) + DAY_MS)
        state = self.cursors.get(key)
        cursor = SearchCursor.from_json(state) if state else SearchCursor(_day_ms(start))
        async for batch in self._search(kind, cursor, upper, key):
            yield batch
        self.cursors.pop(key, None)
        yield Batch(stream=OBJECTS, checkpoint=dict(self.cursors))

    async def _list(self, kind: ObjectType, state: dict[str, Any]) -> AsyncIterator[Batch]:
        started = int(state["list_started"])
        async for page in list_pages(self.api, kind, state.get("list_after")):
            cursor: dict[str, Any] = {"list_started": started, "list_after": page.next_after}
            if page.next_after is None:
                cursor = SearchCursor(started - self.p.settle_seconds * 1000).as_json()
            yield self._batch(kind.name, page.rows, page.rejected, page.checked, cursor)

    async def _search(self, kind: ObjectType, cursor: SearchCursor, upper: int, key: str | None = None,
                      ) -> AsyncIterator[Batch]:
        async for page, after in search_pages(self.api, kind, cursor, upper, self.p.page_size):
            state = (after or SearchCursor(max(upper, cursor.ts))).as_json()
            yield self._batch(key or kind.name, page.rows, page.rejected, page.checked, state)

    async def _archived(self, kind: ObjectType) -> AsyncIterator[Batch]:
        last = self.scans.get(kind.name)
        if last is not None and self.now_ms - int(last) < self.p.archived_every_hours * 3_600_000:
            return
        async for page in list_pages(self.api, kind, None, archived=True):
            if page.next_after is None:
                self.scans[kind.name] = self.now_ms
            yield Batch(stream=ARCHIVED, records=[archived_row(r) for r in page.rows], rejected=page.rejected,
                        items_checked=page.checked,
                        checkpoint=dict(self.scans) if page.next_after is None else NO_CHECKPOINT)


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


# ------------------------------------------------------------------------------------------ events


def event_row(raw: Any) -> tuple[Any, ...]:
    """``(id, event_type, object_type, object_id, occurred_at, properties)``; ValueError when invalid."""
    if not isinstance(raw, dict):
        raise ValueError("the event is not an object")
    eid, etype = raw.get("id"), raw.get("eventType")
    if not isinstance(eid, str) or not eid or not isinstance(etype, str):
        raise ValueError("id or eventType missing")
    props = raw.get("properties") if isinstance(raw.get("properties"), dict) else {}
    obj = raw.get("objectId")
    return (eid, etype, raw.get("objectType"), None if obj is None else str(obj),
            from_ms(parse_ms(raw.get("occurredAt"))), props)


def _iso(ms: int) -> str:
    return from_ms(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def events_query(p: HubSpotParams, event_type: str, ms: int | None) -> dict[str, str]:
    """The first page's query: after the cursor's time (−1 ms: its ids are dropped), or the window."""
    query = {"eventType": event_type, "sort": "occurredAt", "limit": str(p.events_page_size)}
    if p.start is not None and p.end is not None:
        query["occurredBefore"] = _iso(_day_ms(p.end) + DAY_MS)
        ms = ms if ms is not None else _day_ms(p.start)
    if ms is not None:
        query["occurredAfter"] = _iso(ms - 1)
    return query


def event_page(body: Any, ms: int | None, ids: set[str]) -> tuple[list[Any], list[Rejected], int | None, set[str]]:
    """Rows and rejects of one page (occurrences already read at the cursor's time dropped), and the
    cursor after it: the last occurrence time and the ids read at that time."""
    rows: list[Any] = []
    rejected: list[Rejected] = []
    for raw in (body or {}).get("results", []):
        try:
            row = event_row(raw)
        except ValueError as exc:
            rejected.append(Rejected(raw=raw, reason=f"invalid HubSpot event: {exc}"))
            continue
        at = int(row[4].timestamp() * 1000)
        if at == ms and row[0] in ids:
            continue
        rows.append(row)
        ms, ids = (ms, ids | {row[0]}) if at == ms else (at, {row[0]})
    return rows, rejected, ms, ids


async def sync_events(ctx: RunContext, api: HubSpotApi, p: HubSpotParams) -> AsyncIterator[Batch]:
    """Each event type from its cursor (occurrence time), ``after`` paging within the run. A window
    run keeps its cursor under ``window:<type>`` (dropped at the end), never moving the incremental one."""
    cursors: dict[str, Any] = dict(ctx.checkpoint(EVENTS) or {})
    window = p.start is not None and p.end is not None
    for event_type in p.events:
        key = f"window:{event_type}" if window else event_type
        state = cursors.get(key) or {}
        ms, ids = state.get("ms"), set(state.get("ids", []))
        query = events_query(p, event_type, ms)
        while True:
            body = await api.get("/events/v3/events", query)
            rows, rejected, ms, ids = event_page(body, ms, ids)
            if ms is not None:
                cursors[key] = {"ms": ms, "ids": sorted(ids)[:1000]}
            after = ((body or {}).get("paging") or {}).get("next", {}).get("after")
            if window and not after:
                cursors.pop(key, None)
            yield Batch(stream=EVENTS, records=rows, rejected=rejected, checkpoint=dict(cursors),
                        items_checked=len(rows) + len(rejected))
            if not after:
                break
            query["after"] = str(after)


__all__ = ["HubSpotHandler", "HubSpotParams", "stamp_property"]
