"""The ``datasync`` handler: DataSync events, cursor-paginated, into the ``events`` table (issue 8).

This module owns what is specific to the DataSync API: its params, the two envelope shapes, the cursor
and checkpoint rules, and the validation of each event. The runtime does the rest (HTTP retries, 429
pauses, rate limits, commits, dead letters).

The API: ``GET {base_url}{path}?limit={batch_size}&cursor={cursor}`` (no ``cursor`` on the first page) with
``Authorization: Bearer {api_key}``. The body is ``{"data": [...], "pagination": {"hasMore": bool,
"nextCursor": str|null}}`` (what the API really sends) or the documented flat ``{"data": [...], "hasMore":
bool, "nextCursor": str|null}``; the nested shape wins when both are present, anything else is an invalid
envelope. An invalid envelope is re-fetched under the namespace's HTTP retry policy (``max_attempts``),
then fails the run with a message naming what was wrong; nothing of that page is committed.

Cursors and checkpoints (stream ``events``, job-scoped): each page commits with the cursor of the page
after it. When ``hasMore`` is false the checkpoint is the cursor that fetched that last page, so the next
run re-reads it and continues with whatever arrived since — never from the start. Pages may overlap at
their boundaries: within a run, events already seen on the previous page are dropped before the batch is
built; across runs the ``ignore`` conflict policy keeps every event exactly once.

Pipelining: as soon as a page's envelope names the next cursor, the next request is sent, and the page's
events are validated while it is in flight — the fetch chain, not this handler, sets the pace.

Each event needs ``id`` (a non-empty string), ``type`` (a string) and ``timestamp`` (ISO-8601 with a date
and a time; **a timestamp without a zone is read as UTC**). An event that fails — or carries a NUL
character or an unpaired UTF-16 surrogate anywhere, which PostgreSQL's ``jsonb`` rejects — becomes a
dead letter with the reason. ``payload`` is the event as received: every field kept, unicode intact.
A 401/403 fails the run at once with "DataSync rejected the API key (401)"; the key is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batcher import (
    Batch,
    Handler,
    HandlerParams,
    HttpClient,
    PermanentError,
    Rejected,
    RunContext,
    Secret,
    Stream,
)

NAMESPACE = "datasync:events:"
STREAM = "events"
_TIMESTAMP_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class DataSyncParams(HandlerParams):
    """``base_url`` (required), ``api_key`` (secret: ``api_key_env`` in config), ``batch_size``, ``path``."""

    base_url: str
    api_key: Secret
    batch_size: int = Field(100, ge=1, le=1000)
    path: str = "/events"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


# ----------------------------------------------------------------------------------------- envelope


class _Pagination(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    hasMore: bool
    nextCursor: str | None = None


class _NestedPage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    data: list[Any]
    pagination: _Pagination


class _FlatPage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    data: list[Any]
    hasMore: bool
    nextCursor: str | None = None


@dataclass(frozen=True)
class Page:
    """One validated envelope: the raw events, and where the next page is."""

    events: list[Any]
    has_more: bool
    next_cursor: str | None


def parse_page(body: Any) -> Page:
    """The envelope of one response; ``ValueError`` naming what is wrong (the HTTP client retries it)."""
    if not isinstance(body, dict):
        raise ValueError(f"the response is not a JSON object (got {_kind(body)})")
    if "pagination" in body:
        prefix, model = "pagination.", _NestedPage
    elif "hasMore" in body:
        prefix, model = "", _FlatPage
    else:
        raise ValueError("neither pagination nor hasMore in the response "
                         f"(keys: {', '.join(sorted(map(str, body))[:8]) or 'none'})")
    try:
        page = model.model_validate(body)
    except ValidationError as exc:
        raise ValueError(_describe(exc)) from None
    more, cursor = ((page.pagination.hasMore, page.pagination.nextCursor) if isinstance(page, _NestedPage)
                    else (page.hasMore, page.nextCursor))
    if more and not cursor:
        raise ValueError(f"{prefix}nextCursor missing while hasMore=true")
    return Page(page.data, more, cursor if more else None)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc} missing" if err["type"] == "missing" else f"{loc}: {err['msg']}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------- events


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def parse_timestamp(text: str) -> datetime:
    """ISO-8601 date and time; a value without a zone is UTC. ``ValueError`` when it is not one."""
    if not _TIMESTAMP_SHAPE.match(text):
        raise ValueError(text)
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _text_problem(value: Any, where: str) -> str | None:
    """The first string (key or value) holding a NUL or an unpaired surrogate, as a reason."""
    if isinstance(value, str):
        found = _BAD_TEXT.search(value)
        if found is None:
            return None
        return f"{'NUL character' if found.group() == chr(0) else 'unpaired surrogate'} in {where or 'event'}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        path = f"{where}.{key}" if where else str(key)
        problem = _text_problem(key, f"{path} (key)") if isinstance(key, str) else None
        problem = problem or _text_problem(item, path)
        if problem:
            return problem
    return None


def _field(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if value is None:
        raise ValueError(f"{name} missing" if name not in raw else f"{name} is null")
    if not isinstance(value, str):
        raise ValueError(f"{name} is {_kind(value)}, not a string")
    return value


def event_record(raw: Any) -> tuple[str, str, datetime, Any]:
    """``(id, type, occurred_at, payload)`` of one event; ``ValueError(reason)`` when it is invalid."""
    if not isinstance(raw, dict):
        raise ValueError(f"the event is {_kind(raw)}, not an object")
    event_id, event_type, stamp = _field(raw, "id"), _field(raw, "type"), _field(raw, "timestamp")
    if not event_id.strip():
        raise ValueError("id is empty")
    try:
        occurred_at = parse_timestamp(stamp)
    except ValueError:
        raise ValueError(f"timestamp is not ISO-8601: {stamp[:40]!r}") from None
    text = repr(raw)  # repr escapes NUL (\x00) and surrogates (\udXXX): a cheap pre-check
    if "\\x00" in text or "\\ud" in text:
        problem = _text_problem(raw, "")
        if problem:
            raise ValueError(problem)
    return event_id, event_type, occurred_at, raw


def validate_events(events: list[Any]) -> tuple[list[tuple[Any, ...]], list[Rejected]]:
    """Each event on its own: the valid ones as records, the others rejected with their reason."""
    records: list[tuple[Any, ...]] = []
    rejected: list[Rejected] = []
    for raw in events:
        try:
            records.append(event_record(raw))
        except ValueError as exc:
            rejected.append(Rejected(raw=raw, reason=f"invalid DataSync event: {exc}"))
    return records, rejected


def parse_raw_event(text: str) -> tuple[Any, ...]:
    """A dead letter's payload back into a record (``dead-letters replay``)."""
    import json

    return event_record(json.loads(text))


# ------------------------------------------------------------------------------------------ handler


def stored_cursor(checkpoint: Any) -> str | None:
    """The cursor to start from: the checkpoint's ``cursor`` (None: from the first page)."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("cursor"), str):
        return str(checkpoint["cursor"])
    return None


def page_fetcher(client: HttpClient, params: DataSyncParams) -> Callable[[str | None], Awaitable[Page]]:
    """A function fetching (and validating the envelope of) the page at a cursor."""
    url = params.base_url + params.path
    headers = {"Authorization": f"Bearer {params.api_key.get_secret_value()}"}
    limit = str(params.batch_size)

    async def fetch(cursor: str | None) -> Page:
        query = {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}
        try:
            page: Page = await client.get_json(url, params=query, headers=headers,  # type: ignore[call-arg]
                                               validate=parse_page)
        except PermanentError as exc:
            status = getattr(exc, "status", None)
            if status in (401, 403):
                raise PermanentError(f"DataSync rejected the API key ({status})") from None
            raise
        return page

    return fetch


class DataSyncHandler(Handler):
    type = "datasync"
    display_name = "DataSync events"
    Params = DataSyncParams
    streams = (Stream(name=STREAM, table="events", key_columns=("id",),
                      value_columns=("type", "occurred_at", "payload"), conflict="ignore", scope="job",
                      bookkeeping_columns=("ingested_at",), json_columns=("payload",),
                      parse_raw=parse_raw_event),)
    default_interval_minutes = 5

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:  # type: ignore[override]
        fetch = page_fetcher(ctx.http(NAMESPACE), params)
        cursor = stored_cursor(ctx.checkpoint(STREAM))
        pending = asyncio.ensure_future(fetch(cursor))
        previous_ids: set[str] = set()
        done = 0
        try:
            while True:
                page = await pending
                if page.has_more:  # the next request goes out now; this page is validated meanwhile
                    pending = asyncio.ensure_future(fetch(page.next_cursor))
                records, rejected = validate_events(page.events)
                fresh = [r for r in records if r[0] not in previous_ids]
                done += len(fresh) + len(rejected)
                ctx.report_progress(done=done)
                yield Batch(stream=STREAM, records=fresh, rejected=rejected, items_checked=len(page.events),
                            checkpoint={"cursor": page.next_cursor if page.has_more else cursor})
                if not page.has_more:
                    return
                previous_ids = {r[0] for r in records}
                cursor = page.next_cursor
        finally:
            await _discard(pending)


async def _discard(task: asyncio.Future[Page]) -> None:
    """Cancel a fetch nobody will read (the run stopped), and collect its outcome."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
