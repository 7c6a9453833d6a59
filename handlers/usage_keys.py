"""The usage counters' key format and reader (``usage_aggregation``, :mod:`handlers.usage`).

The merchant platform counts usage with ``INCRBY`` on keys ``{prefix}:{merchant}:{date}:{metric}``
(dates in UTC). This module owns the key format, its validation, and reading the counters:

- **One SCAN pass** over ``{prefix}:*`` (``{prefix}:{merchant}:*`` with a merchant filter, glob characters
  escaped) with a large ``COUNT``. SCAN visits the whole keyspace whatever its ``MATCH``, so dates are never
  scanned one by one: keys are bucketed by their date part client-side and only the requested dates kept.
- **Values by MGET** in pipelined chunks. ``MGET`` answers nil for a key that is not a string (or vanished
  since the SCAN): its ``TYPE`` decides — ``none`` (expired meanwhile) is skipped, anything else is a
  dead letter.
- **Validity**: exactly four ``:``-separated parts, none empty, a real ``YYYY-MM-DD`` date, UTF-8 without
  NUL, and a string value that Redis itself would read as a 64-bit integer. A merchant id containing ``:``
  therefore makes its keys malformed. A key is attributed to a date by its second-to-last part; malformed
  keys are dead-lettered (the payload is the key itself, so each key is kept once) when that date is
  requested, and always when the key has no date at all. Keys are never deleted.
- **Checkpoint** (stream ``merchant_usage``, run-scoped): ``{"cursor": SCAN cursor after the last committed
  page, "dates": the run's resolved dates, "params": the params that choose the keys, "keys": keys checked
  so far, "done": bool}``. Each batch holds whole SCAN pages, so a killed run resumes after the last
  committed page; SCAN's guarantee (every key present for the whole iteration is returned) holds across
  the resume because the cursor is stateless. A key seen twice is simply written twice (set semantics).
  A checkpoint written for other params (another date or merchant) is ignored.

Records are ``(merchant_id, usage_date, metric_type, value)``; the stream's ``update_if_changed`` policy
makes a rerun with unchanged counters write nothing, ``aggregated_at`` included.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator, model_validator

from batcher import HandlerParams, Rejected

STREAM = "merchant_usage"
CHECKPOINT_VERSION = 1
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,18}")  # what Redis' string2ll accepts
_INT64 = (-(2**63), 2**63 - 1)
_GLOB_SPECIAL = frozenset(b"*?[]\\")
_VALUE_EXCERPT = 64
MAX_SCANS_PER_PAGE = 50


class MalformedKey(ValueError):
    """A key (or its value) that breaks the format; the message is the dead letter's reason."""


@dataclass(frozen=True)
class UsageKey:
    """One valid counter key."""

    merchant_id: str
    usage_date: dt.date
    metric_type: str


def strict_date(text: str | bytes) -> dt.date | None:
    """``YYYY-MM-DD`` as a real date, else None (``date.fromisoformat`` alone also takes ``20251101``)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not _DATE.fullmatch(text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def glob_escape(text: bytes) -> bytes:
    """``text`` as a literal inside a Redis ``MATCH`` pattern."""
    return b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIAL else bytes([c]) for c in text)


def match_pattern(key_prefix: str, merchant: str | None = None) -> bytes:
    """The SCAN ``MATCH`` pattern: every key of the prefix, or of one merchant."""
    literal = key_prefix.encode() + b":" + (merchant.encode() + b":" if merchant is not None else b"")
    return glob_escape(literal) + b"*"


def key_date(key: bytes, key_prefix: str) -> dt.date | None:
    """The date a key is filed under: its second-to-last part, when that is a real date."""
    parts = key[len(key_prefix) + 1:].split(b":")
    return strict_date(parts[-2]) if len(parts) >= 3 else None


def parse_key(key: bytes, key_prefix: str) -> UsageKey:
    """A valid key's parts, or :class:`MalformedKey` saying what is wrong with it."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedKey("key is not valid UTF-8") from None
    if "\x00" in text:
        raise MalformedKey("key contains a NUL byte")
    parts = text.split(":")
    if len(parts) != 4 or parts[0] != key_prefix:
        raise MalformedKey(f"key has {len(parts)} ':'-separated parts, expected 4 "
                           f"({key_prefix}:merchant:date:metric; a merchant id may not contain ':')")
    if not all(parts):
        raise MalformedKey("key has an empty part")
    day = strict_date(parts[2])
    if day is None:
        raise MalformedKey(f"{parts[2]!r} is not a real date (YYYY-MM-DD)")
    return UsageKey(parts[1], day, parts[3])


def parse_value(value: bytes) -> int:
    """A counter's value, or :class:`MalformedKey` when Redis would not read it as a 64-bit integer."""
    if _INTEGER.fullmatch(value):
        number = int(value)
        if _INT64[0] <= number <= _INT64[1]:
            return number
    raise MalformedKey(f"value {value[:_VALUE_EXCERPT]!r} is not a 64-bit integer")


class UsageParams(HandlerParams):
    """``date`` or ``start``/``end`` (inclusive, UTC dates); neither: the last ``lookback_days`` days."""

    date: dt.date | None = Field(None, description="one UTC date")
    start: dt.date | None = Field(None, description="first date (with end)")
    end: dt.date | None = Field(None, description="last date, inclusive")
    merchant: str | None = Field(None, min_length=1, description="only this merchant id")
    lookback_days: int = Field(2, ge=1, le=366, description="without date/start/end: the last N days")
    key_prefix: str = Field("usage", min_length=1, description="the Redis keys' prefix")
    chunk_size: int = Field(1000, ge=1, le=100_000, description="keys per MGET command (pipelined)")
    batch_size: int = Field(10_000, ge=1, le=1_000_000, description="keys per committed batch (whole SCAN "
                            "pages)")
    scan_count: int = Field(10_000, ge=1, le=1_000_000, description="SCAN COUNT hint")

    @field_validator("merchant", "key_prefix")
    @classmethod
    def _no_colon(cls, value: str | None) -> str | None:
        if value is not None and ":" in value:
            raise ValueError("may not contain ':' (it separates the key's parts)")
        return value

    @model_validator(mode="after")
    def _window(self) -> UsageParams:
        if self.date is not None and (self.start is not None or self.end is not None):
            raise ValueError("give date, or start and end, not both")
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end go together")
        if self.start and self.end and self.end < self.start:
            raise ValueError("end is before start")
        return self

    def dates(self, today: dt.date) -> list[dt.date]:
        """The requested dates in order; ``today`` is the current UTC date."""
        if self.date is not None:
            return [self.date]
        first, last = (self.start, self.end) if self.start and self.end else \
            (today - dt.timedelta(days=self.lookback_days - 1), today)
        return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]

    def selection(self) -> dict[str, Any]:
        """The params that choose the keys (a checkpoint of other params is not resumed)."""
        return self.model_dump(mode="json", include={"date", "start", "end", "merchant", "lookback_days",
                                                     "key_prefix"})


@dataclass
class Page:
    """The counters of one or more whole SCAN pages: the cursor after them, rows, rejects, keys checked."""

    cursor: int
    records: list[tuple[str, dt.date, str, int]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    checked: int = 0


class UsageReader:
    """Reads the counters of some dates (and one merchant) from a ``redis.asyncio`` client (bytes mode)."""

    def __init__(self, redis: Any, dates: Sequence[dt.date], *, key_prefix: str = "usage",
                 merchant: str | None = None, chunk_size: int = 1000, batch_size: int = 10_000,
                 scan_count: int = 10_000) -> None:
        self.redis = redis
        self.dates = frozenset(dates)
        self.key_prefix = key_prefix
        self.merchant = merchant
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.scan_count = scan_count

    def wanted(self, key: bytes) -> bool:
        """Keys of a requested date, and keys without any date (always reported as malformed)."""
        day = key_date(key, self.key_prefix)
        return day is None or day in self.dates

    async def pages(self, cursor: int = 0) -> AsyncIterator[Page]:
        """Scan from ``cursor`` to the end. A page closes at ``batch_size`` wanted keys, after
        ``MAX_SCANS_PER_PAGE`` SCAN calls (so the cursor moves on through keys of other dates) or at the end."""
        pattern = match_pattern(self.key_prefix, self.merchant)
        pending: list[bytes] = []
        scans = 0
        while True:
            cursor, keys = await self.redis.scan(cursor=cursor, match=pattern, count=self.scan_count)
            pending.extend(k for k in keys if self.wanted(k))
            scans += 1
            if len(pending) >= self.batch_size or scans >= MAX_SCANS_PER_PAGE or cursor == 0:
                yield await self.read(int(cursor), pending)
                pending, scans = [], 0
            if cursor == 0:
                return

    async def read(self, cursor: int, keys: Sequence[bytes]) -> Page:
        """Validate ``keys`` and fetch the values of the well-formed ones."""
        page = Page(cursor)
        valid: list[tuple[bytes, UsageKey]] = []
        for key in keys:
            try:
                valid.append((key, parse_key(key, self.key_prefix)))
            except MalformedKey as exc:
                page.rejected.append(Rejected(raw=key, reason=str(exc)))
        page.checked = len(page.rejected)
        values = await self.values([k for k, _ in valid])
        missing = [k for (k, _), v in zip(valid, values, strict=True) if v is None]
        types = dict(zip(missing, await self.types(missing), strict=True)) if missing else {}
        for (key, parsed), value in zip(valid, values, strict=True):
            if value is None:
                if types[key] != b"none":  # b"none": expired since the SCAN, nothing to say
                    page.checked += 1
                    page.rejected.append(Rejected(raw=key, reason=f"key holds a {types[key].decode()}, "
                                                                    "not a string counter"))
                continue
            page.checked += 1
            try:
                page.records.append((parsed.merchant_id, parsed.usage_date, parsed.metric_type,
                                     parse_value(value)))
            except MalformedKey as exc:
                page.rejected.append(Rejected(raw=key, reason=str(exc)))
        return page

    async def values(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """MGET in chunks of ``chunk_size`` keys, all chunks in one pipeline round trip."""
        if not keys:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for lo in range(0, len(keys), self.chunk_size):
            pipe.mget(keys[lo:lo + self.chunk_size])
        chunks = await pipe.execute()
        return [value for chunk in chunks for value in chunk]

    async def types(self, keys: Sequence[bytes]) -> list[bytes]:
        """TYPE of each key, in one pipeline round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        answers = await pipe.execute()
        return [a if isinstance(a, bytes) else str(a).encode() for a in answers]
