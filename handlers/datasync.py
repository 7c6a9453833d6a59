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
events are validated while it is in flight — the fetch chain, not this handler, sets the pace. The
chain runs up to :data:`PAGES_AHEAD` pages ahead, and a batch is built only when the runner asks for
the next one (``prefetch_batches = 0``): it holds every page fetched while the previous batch committed —
fewer, larger transactions exactly when the database is the slower side, and after the last page one
commit of all that is left.

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
    json_loads,
)

NAMESPACE = "datasync:events:"
STREAM = "events"
_TIMESTAMP_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
#: In raw JSON: an escaped NUL or surrogate (a literal prefix: scanned at memchr speed), then, only when
#: a surrogate escape is present, one that is not half of a pair. A literal ``\\u0000`` in the text
#: matches too: that only costs a closer look at the page.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_UNPAIRED_ESCAPE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                              rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")
PAGES_AHEAD = 8  # pages fetched ahead of validation (the fetch chain never waits for the database)
CHUNK = 100  # events validated between two yields to the event loop


class DataSyncParams(HandlerParams):
    """``base_url`` (required), ``api_key`` (secret: ``api_key_env`` in config), ``batch_size``, ``path``."""

    base_url: str = Field(description="the DataSync API, http(s)://host[:port]")
    api_key: Secret = Field(description="the API key")
    batch_size: int = Field(100, ge=1, le=1000, description="events per page (the API's page size)")
    path: str = Field("/events", description="the events endpoint's path")

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
    suspicious: bool = True  # may hold a NUL or an unpaired surrogate: check every string


def parse_body(raw: bytes) -> Page:
    """The envelope of a raw response body; only a body with suspicious escapes needs a deep check."""
    try:
        body = json_loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise ValueError(f"the response body is not JSON ({type(exc).__name__})") from None
    page = parse_page(body)
    if not _suspect(raw):
        page = Page(page.events, page.has_more, page.next_cursor, suspicious=False)
    return page


def _suspect(raw: bytes) -> bool:
    """True when the raw JSON may hold a NUL or an unpaired surrogate."""
    found = {m.group() for m in _SUSPECT_ESCAPE.finditer(raw)}
    if not found:
        return False
    return b"\\u0000" in found or _UNPAIRED_ESCAPE.search(raw) is not None


def parse_page(body: Any) -> Page:
    """The envelope of one response; ``ValueError`` naming what is wrong (the HTTP client retries it)."""
    if not isinstance(body, dict):
        raise ValueError(f"the response is not a JSON object (got {_kind(body)})")
    model: type[_NestedPage] | type[_FlatPage]
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


def event_record(raw: Any, deep: bool = True) -> tuple[str, str, datetime, Any]:
    """``(id, type, occurred_at, payload)`` of one event; ``ValueError(reason)`` when it is invalid.

    ``deep=False`` skips the scan of every string for NUL and unpaired surrogates (the raw page had none).
    """
    if not isinstance(raw, dict):
        raise ValueError(f"the event is {_kind(raw)}, not an object")
    event_id, event_type, stamp = raw.get("id"), raw.get("type"), raw.get("timestamp")
    if not (isinstance(event_id, str) and isinstance(event_type, str) and isinstance(stamp, str)):
        event_id, event_type, stamp = _field(raw, "id"), _field(raw, "type"), _field(raw, "timestamp")
    if not event_id.strip():
        raise ValueError("id is empty")
    try:
        occurred_at = parse_timestamp(stamp)
    except ValueError:
        raise ValueError(f"timestamp is not ISO-8601: {stamp[:40]!r}") from None
    try:
        problem = _text_problem(raw, "") if deep else None
    except RecursionError:  # orjson parses up to 1024 levels, deeper than this walk may recurse
        problem = "nested too deeply to check its text"
    if problem:
        raise ValueError(problem)
    return event_id, event_type, occurred_at, raw


def validate_events(events: list[Any], deep: bool = True) -> tuple[list[tuple[Any, ...]], list[Rejected]]:
    """Each event on its own: the valid ones as records, the others rejected with their reason."""
    records: list[tuple[Any, ...]] = []
    rejected: list[Rejected] = []
    for raw in events:
        try:
            records.append(event_record(raw, deep))
        except ValueError as exc:
            rejected.append(Rejected(raw=raw, reason=f"invalid DataSync event: {exc}"))
    return records, rejected


def parse_raw_event(text: str) -> tuple[Any, ...]:
    """A dead letter's payload back into a record (``dead-letters replay``)."""
    return event_record(json_loads(text))


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
            page: Page = await client.get_json(url, params=query, headers=headers,
                                               validate=parse_body, raw_body=True)
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
    prefetch_batches = 0  # each batch is built when the runner asks for it, from every page fetched by then

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        fetch = page_fetcher(ctx.http(NAMESPACE), params)
        seen: set[str] = set()  # ids of the previous batch's last page: overlaps are dropped here
        done = 0
        async with page_chain(fetch, stored_cursor(ctx.checkpoint(STREAM))) as groups:
            async for group in groups:
                batch, seen = await build_batch(group, seen)
                done += len(batch.records) + len(batch.rejected)
                ctx.report_progress(done=done)
                yield batch


async def build_batch(group: list[tuple[str | None, Page]], seen: set[str]) -> tuple[Batch, set[str]]:
    """One batch of consecutive pages, checkpointed after the last of them; also the ids of that page.

    An event already seen on the page before (pages overlap at their boundaries) is left out.
    """
    records: list[tuple[Any, ...]] = []
    rejected: list[Rejected] = []
    for _, page in group:
        good, bad = await validate_page(page)
        records += [r for r in good if r[0] not in seen]
        rejected += bad
        seen = {r[0] for r in good}
    cursor, last = group[-1]
    batch = Batch(stream=STREAM, records=records, rejected=rejected,
                  items_checked=sum(len(page.events) for _, page in group),
                  checkpoint={"cursor": last.next_cursor if last.has_more else cursor})
    return batch, seen


async def validate_page(page: Page) -> tuple[list[tuple[Any, ...]], list[Rejected]]:
    """:func:`validate_events` in chunks, letting the event loop answer the fetch chain in between."""
    records: list[tuple[Any, ...]] = []
    rejected: list[Rejected] = []
    for lo in range(0, len(page.events), CHUNK):
        good, bad = validate_events(page.events[lo:lo + CHUNK], page.suspicious)
        records += good
        rejected += bad
        await asyncio.sleep(0)
    return records, rejected


@contextlib.asynccontextmanager
async def page_chain(fetch: Callable[[str | None], Awaitable[Page]], cursor: str | None,
                     ) -> AsyncIterator[AsyncIterator[list[tuple[str | None, Page]]]]:
    """Follow the cursor chain in its own task, up to :data:`PAGES_AHEAD` pages ahead of the reader.

    Yields groups of ``(cursor that fetched it, page)`` in order: the next page, and every page already
    fetched after it — so when the database is the bottleneck, batches grow and commits get fewer. A
    fetch error reaches the reader after the pages fetched before it. The task is cancelled when the
    block ends.
    """
    queue: asyncio.Queue[tuple[str | None, Page] | Exception | None] = asyncio.Queue(PAGES_AHEAD)

    async def follow(at: str | None) -> None:
        try:
            while True:
                page = await fetch(at)
                await queue.put((at, page))
                if not page.has_more:
                    break
                at = page.next_cursor
            await queue.put(None)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, raised there
            await queue.put(exc)

    async def read() -> AsyncIterator[list[tuple[str | None, Page]]]:
        while True:
            items = [await queue.get()]
            while isinstance(items[-1], tuple) and not queue.empty():
                items.append(queue.get_nowait())
            group = [item for item in items if isinstance(item, tuple)]
            if group:
                yield group
            if isinstance(items[-1], Exception):
                raise items[-1]
            if items[-1] is None:
                return

    task = asyncio.create_task(follow(cursor))
    try:
        yield read()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
