"""Reading HubSpot CRM records: the list endpoint, keyset search past the 10,000 cap, properties, archived.

Owns the paging rules of the ``hubspot`` handler (it turns pages into batches):

- **List** (``GET /crm/v3/objects/{type}``, 100 per page, ordered by id, no cap): the first sync of an
  object type. Its cursor is ``{"list_started": ms, "list_after": after}``; when the list ends the type
  switches to search from ``list_started`` minus ``settle_seconds`` (records modified meanwhile are read).
- **Search** (``POST /crm/v3/objects/{type}/search``, 200 per page). HubSpot allows one sort rule, so ties
  of the modification time come back in no promised order, and ``after`` is an offset capped at 10,000
  that shifts when a record read earlier is modified meanwhile. So every page is its own *keyset* query —
  ``after`` is never sent and the cap can never be reached — from the cursor ``(ts, id, tie)``, meaning
  "every record modified before ``ts``, and those at ``ts`` with an id ≤ ``id``, are read":
  time mode filters ``[{ts = T, hs_object_id > I}, {ts > T}]`` (or ``ts ≥ T`` when ``I`` is 0) sorted by
  the time; the next page starts at the page's last time with id 0, skipping in memory the ids already
  read at that time. A full page all at one time cannot advance by time: tie mode then reads that time
  alone, ``{ts = T, hs_object_id > I}`` sorted by id, page after page (any number of records sharing one
  timestamp terminates), then time mode goes on with ``{ts = T, id > last}, {ts > T}``. Every query also
  has ``ts < upper`` (run start minus ``settle_seconds``: HubSpot's search index lags behind writes). An
  exhausted search sets the cursor to ``(upper, 0)``.
- **Properties**: ``"all"`` comes from ``GET /crm/v3/properties/{type}`` (custom objects: their schema);
  names are packed into chunks of at most ``properties_chunk_chars`` characters: the first chunk goes with
  the list/search request, each other chunk costs one ``batch/read`` per 100 records.
- **Archived**: ``GET …?archived=true`` lists every archived record; its rows set ``archived`` (and
  ``archived_at``). Scanned when the last scan is ``archived_every_hours`` old (it re-reads them all).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from batcher import Rejected
from handlers.hubspot_api import HubSpotApi

LIST_LIMIT = 100
BATCH_READ_LIMIT = 100
Row = tuple[Any, ...]


def stamp_property(object_type: str) -> str:
    """The modification-time property searched on: contacts have their own name for it."""
    return "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"


def parse_ms(text: Any) -> int:
    """Epoch milliseconds of an ISO-8601 time or a millisecond string (``ValueError`` otherwise)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a time: {str(text)[:40]!r}")
    if text.isdigit():
        return int(text)
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def chunk_properties(names: Sequence[str], first: str, max_chars: int) -> list[list[str]]:
    """``names`` packed into chunks whose comma-joined length stays under ``max_chars``; ``first`` (the
    modification-time property) leads the first chunk."""
    chunks: list[list[str]] = [[first]]
    size = len(first)
    for name in dict.fromkeys(n for n in names if n != first):
        if size + 1 + len(name) > max_chars:
            chunks.append([])
            size = -1
        chunks[-1].append(name)
        size += 1 + len(name)
    return chunks


@dataclass
class ObjectType:
    """One object type to sync: its name (table key), its path segment, its stamp and property chunks."""

    name: str
    path: str
    chunks: list[list[str]] = field(default_factory=list)

    @property
    def stamp(self) -> str:
        return stamp_property(self.name)


@dataclass
class Page:
    """Validated rows of one page, the records it rejected, and (for search) each row's time and id."""

    rows: list[Row]
    rejected: list[Rejected]
    keys: list[tuple[int, int]]  # (modification ms, id) per row
    checked: int
    next_after: str | None = None
    #: (ms, id) of every result that has them, rejected ones included: what the cursor moves by
    all_keys: list[tuple[int, int]] = field(default_factory=list)


def record_row(kind: ObjectType, raw: Any) -> tuple[Row, tuple[int, int]]:
    """``(object_type, id, properties, created_at, updated_at, archived)`` and ``(ms, id)``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("properties"), dict):
        raise ValueError("the record is not an object with properties")
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid.isdigit():
        raise ValueError(f"id is not a numeric string: {str(rid)[:40]!r}")
    props = raw["properties"]
    ms = parse_ms(props.get(kind.stamp) or raw.get("updatedAt"))
    created = raw.get("createdAt")
    row = (kind.name, rid, props, from_ms(parse_ms(created)) if created else None, from_ms(ms),
           bool(raw.get("archived", False)))
    return row, (ms, int(rid))


def parse_page(kind: ObjectType, body: Any) -> Page:
    """A list or search response; ``ValueError`` when the envelope is wrong (fetched again)."""
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise ValueError("no results list in the response")
    page = Page([], [], [], len(body["results"]))
    for raw in body["results"]:
        try:
            row, key = record_row(kind, raw)
        except ValueError as exc:
            page.rejected.append(Rejected(raw=raw, reason=f"invalid HubSpot {kind.name} record: {exc}"))
            if (rough := _rough_key(kind, raw)) is not None:
                page.all_keys.append(rough)
            continue
        page.rows.append(row)
        page.keys.append(key)
        page.all_keys.append(key)
    nxt = ((body.get("paging") or {}).get("next") or {}).get("after")
    page.next_after = str(nxt) if nxt not in (None, "") else None
    return page


def _rough_key(kind: ObjectType, raw: Any) -> tuple[int, int] | None:
    """(ms, id) of a rejected record when it has them (so the search cursor can move past it)."""
    try:
        return parse_ms(raw["properties"][kind.stamp]), int(raw["id"])
    except (KeyError, TypeError, ValueError):
        return None


async def complete_properties(api: HubSpotApi, kind: ObjectType, page: Page) -> None:
    """Fetch the property chunks after the first with ``batch/read`` (100 ids a call) and merge them."""
    if len(kind.chunks) < 2 or not page.rows:
        return
    by_id = {row[1]: row[2] for row in page.rows}
    ids = list(by_id)
    for chunk in kind.chunks[1:]:
        for lo in range(0, len(ids), BATCH_READ_LIMIT):
            body = {"properties": chunk, "inputs": [{"id": i} for i in ids[lo:lo + BATCH_READ_LIMIT]]}
            answer = await api.post(f"/crm/v3/objects/{kind.path}/batch/read", body)
            for raw in (answer or {}).get("results", []):
                if isinstance(raw, dict) and raw.get("id") in by_id and isinstance(raw.get("properties"), dict):
                    by_id[raw["id"]].update(raw["properties"])


async def list_pages(api: HubSpotApi, kind: ObjectType, after: str | None, *, archived: bool = False,
                     ) -> AsyncIterator[Page]:
    """The list endpoint from ``after`` to its end (``archived``: the archived records instead)."""
    while True:
        query = {"limit": str(LIST_LIMIT), "properties": ",".join(kind.chunks[0])}
        if archived:
            query["archived"] = "true"
        if after:
            query["after"] = after
        page = parse_page(kind, await api.get(f"/crm/v3/objects/{kind.path}", query))
        if not archived:
            await complete_properties(api, kind, page)
        yield page
        if page.next_after is None:
            return
        after = page.next_after


# ------------------------------------------------------------------------------------------ search


@dataclass
class SearchCursor:
    """Everything before ``ts``, and at ``ts`` every id ≤ ``id``, is read; ``tie``: reading ``ts`` by id."""

    ts: int
    id: int = 0
    tie: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"ts": self.ts, "id": self.id, "tie": self.tie}

    @classmethod
    def from_json(cls, value: Any) -> SearchCursor:
        return cls(int(value["ts"]), int(value.get("id", 0)), bool(value.get("tie", False)))


def _flt(prop: str, op: str, value: int) -> dict[str, str]:
    return {"propertyName": prop, "operator": op, "value": str(value)}


def search_body(kind: ObjectType, cur: SearchCursor, upper: int, limit: int) -> dict[str, Any]:
    """One keyset query (see the module docstring): ≤ 2 filter groups of ≤ 3 filters, one sort."""
    stamp, below = kind.stamp, _flt(kind.stamp, "LT", upper)
    at_t = [_flt(stamp, "EQ", cur.ts), _flt("hs_object_id", "GT", cur.id), below]
    if cur.tie:
        groups, sort = [at_t], "hs_object_id"
    elif cur.id == 0:
        groups, sort = [[_flt(stamp, "GTE", cur.ts), below]], stamp
    else:
        groups, sort = [at_t, [_flt(stamp, "GT", cur.ts), below]], stamp
    return {"filterGroups": [{"filters": g} for g in groups],
            "sorts": [{"propertyName": sort, "direction": "ASCENDING"}],
            "properties": kind.chunks[0], "limit": limit}


def advance(cur: SearchCursor, page: Page, limit: int, seen: set[int], upper: int,
            ) -> tuple[SearchCursor | None, set[int]]:
    """The cursor after a page (None: the search is exhausted up to ``upper``) and the ids read at its time."""
    keys = page.all_keys
    if page.checked and not keys:
        raise ValueError("no result of the page has an id and a modification time")
    if cur.tie:
        last_id = max([cur.id, *(i for _, i in keys)])
        more = page.checked >= limit  # ids read at ts in time mode may come up until the tie is done
        return SearchCursor(cur.ts, last_id, tie=more), seen if more else set()
    if page.checked < limit:
        return None, set()
    last_ts = keys[-1][0] if keys else cur.ts
    if last_ts == cur.ts:  # a full page at one time: read that time by id
        return SearchCursor(cur.ts, cur.id, tie=True), seen | {i for ts, i in keys if ts == cur.ts}
    return SearchCursor(last_ts, 0), {i for ts, i in keys if ts == last_ts}


async def search_pages(api: HubSpotApi, kind: ObjectType, cur: SearchCursor, upper: int, limit: int,
                       ) -> AsyncIterator[tuple[Page, SearchCursor | None]]:
    """Keyset pages from ``cur`` up to ``upper``, each with the cursor after it; ids already read at the
    boundary time are dropped from the page."""
    seen: set[int] = set()
    current: SearchCursor | None = cur
    while current is not None:
        page = parse_page(kind, await api.post(f"/crm/v3/objects/{kind.path}/search",
                                               search_body(kind, current, upper, limit), search=True))
        next_cur, next_seen = advance(current, page, limit, seen, upper)
        _drop_read(page, current.ts, seen)
        await complete_properties(api, kind, page)
        yield page, next_cur
        current, seen = next_cur, next_seen


def _drop_read(page: Page, boundary_ts: int, read_ids: set[int]) -> None:
    """Drop the rows at the boundary time whose ids were already read."""
    kept = [(row, key) for row, key in zip(page.rows, page.keys, strict=True)
            if not (key[0] == boundary_ts and key[1] in read_ids)]
    page.rows = [row for row, _ in kept]
    page.keys = [key for _, key in kept]


def archived_row(row: Row) -> Row:
    """An archived listing's row for the ``archived`` stream: ``(object_type, id, True, archived_at)``."""
    return (row[0], row[1], True, row[4])
