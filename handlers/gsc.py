"""The ``gsc`` handler: Google Search Console search analytics, one day at a time (issue 16).

This module owns what is specific to the Search Console API: its params, the sites list, the query
body, paging, the incremental day window and the shape of a record. The runtime does the rest (OAuth2
tokens, HTTP retries, 429/403-quota pauses, rate limits, commits, checkpoints).

The API (https://developers.google.com/webmaster-tools/v1/searchanalytics/query):
``POST {base_url}/webmasters/v3/sites/{site, URL-encoded}/searchAnalytics/query`` with ``{"startDate",
"endDate", "dimensions", "type", "dataState", "rowLimit", "startRow"}``; the answer is ``{"rows": [{"keys":
[…], "clicks", "impressions", "ctr", "position"}], "responseAggregationType"}`` and has no ``rows`` at all
when there is nothing (more). ``rowLimit`` is at most 25,000; pages are read until a short page. About
50,000 rows per day and search type is all the API returns: a day reaching ``row_cap`` is noted in the
run's result (``row_cap_days``). Dates are Pacific Time. ``sites = "all"``: every site of ``GET
{base_url}/webmasters/v3/sites`` except those with permission ``siteUnverifiedUser``.

Days: a probe query grouped by ``date`` alone (Google's "verify data presence") finds the days with data
from the first wanted day to today (PT). Incremental runs start after the site's checkpoint day minus
``refresh_days`` (recent days still change) and stop at the newest day with data; a site without a
checkpoint starts ``initial_days`` back. A run with ``start``/``end`` reads that window and moves no
checkpoint. Each day is one batch that replaces the day's rows exactly (``Batch.replace_scope``), with the
checkpoint ``{"sites": {site: newest day committed}}`` in the same transaction. Up to ``DAYS_AHEAD`` days
of a site are fetched at once (the rate limiter paces them) and yielded in order.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from batcher import (
    NO_CHECKPOINT,
    Batch,
    Handler,
    HandlerParams,
    HttpClient,
    OAuth2Credentials,
    RateLimit,
    Rejected,
    RunContext,
    Secret,
    Stream,
    TransientError,
)

NAMESPACE = "gsc:searchanalytics:"
SITES_NAMESPACE = "gsc:sites:"
#: The handler's default rate limits (``GscHandler.default_rate_limits``); a TOML entry overrides one.
RATE_LIMITS = {
    # Search Analytics: 1,200 queries per minute per site (also per user);
    # https://developers.google.com/webmaster-tools/limits ("QPS quota"). The same page, "Load quota":
    # "If you exceed your quota, wait 15 minutes and try again" — the pause after a 403 quotaExceeded.
    NAMESPACE: RateLimit(interval_ms=60_000, max_in_interval=1_200, quota_pause_ms=15 * 60_000),
}
STREAM = "search_analytics"
PACIFIC = ZoneInfo("America/Los_Angeles")
MAX_ROW_LIMIT = 25_000
HISTORY_MONTHS = 16
DIMENSIONS = ("date", "query", "page", "country", "device", "searchAppearance")
DIMENSION_COLUMNS = {"query": "query", "page": "page", "country": "country", "device": "device",
                     "searchAppearance": "search_appearance"}
MAX_NOTED_DAYS = 100
DAYS_AHEAD = 4  # days of one site fetched concurrently (in order for the pipeline)
INVALID_GRANT = ("the Search Console refresh token was revoked or has expired: create a new one (OAuth "
                 "consent with the webmasters.readonly scope) and put it in the job's refresh_token_env "
                 "variable")


class GscParams(HandlerParams):
    """Search Console params; ``client_secret`` and ``refresh_token`` are secrets (``*_env`` in config)."""

    base_url: str = "https://www.googleapis.com"
    token_url: str = "https://oauth2.googleapis.com/token"
    client_id: str
    client_secret: Secret
    refresh_token: Secret
    sites: list[str] | Literal["all"]
    dimensions: tuple[str, ...] = ("date", "query", "page", "country", "device")
    search_type: Literal["web", "image", "video", "news", "discover", "googleNews"] = "web"
    data_state: Literal["final", "all"] = "final"
    refresh_days: int = Field(3, ge=0, le=30)
    initial_days: int = Field(30, ge=1, le=490)
    row_limit: int = Field(MAX_ROW_LIMIT, ge=1, le=MAX_ROW_LIMIT)
    row_cap: int = Field(50_000, ge=1)
    start: dt.date | None = None
    end: dt.date | None = None

    @field_validator("base_url", "token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("sites", mode="before")
    @classmethod
    def _one_site(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) and value != "all" else value

    @field_validator("dimensions")
    @classmethod
    def _known_dimensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [d for d in value if d not in DIMENSIONS]
        if unknown or not value or len(set(value)) != len(value):
            raise ValueError(f"dimensions are distinct names among {', '.join(DIMENSIONS)} (got {value})")
        return value

    @model_validator(mode="after")
    def _window(self) -> GscParams:
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end go together")
        if self.start and self.end and self.end < self.start:
            raise ValueError("end is before start")
        if self.data_state == "all" and self.refresh_days < 1:
            raise ValueError("data_state 'all' reads days that still change: refresh_days must be at least 1")
        return self

    def credentials(self) -> OAuth2Credentials:
        return OAuth2Credentials(token_url=self.token_url, client_id=self.client_id,
                                 client_secret=self.client_secret.get_secret_value(),
                                 refresh_token=self.refresh_token.get_secret_value(),
                                 invalid_grant_message=INVALID_GRANT)

    def namespace(self) -> str:
        """The per-user quota namespace: the shared prefix plus a hash identifying the credential."""
        user = hashlib.sha256(f"{self.client_id}\0{self.refresh_token.get_secret_value()}".encode())
        return NAMESPACE + user.hexdigest()[:12]


# ---------------------------------------------------------------------------------------- records


def today_pacific(now: dt.datetime | None = None) -> dt.date:
    """Today's date in Pacific Time (Search Console's day boundary)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(PACIFIC).date()


def months_back(day: dt.date, months: int) -> dt.date:
    """``day`` minus whole months (the day of month clamped to 28 for simplicity)."""
    total = day.year * 12 + day.month - 1 - months
    return dt.date(total // 12, total % 12 + 1, min(day.day, 28))


def row_record(site: str, params: GscParams, day: dt.date, row: Any) -> tuple[Any, ...]:
    """One API row as a record in :data:`STREAM` column order; ``ValueError`` when it is malformed."""
    if not isinstance(row, dict):
        raise ValueError("the row is not an object")
    keys = row.get("keys", [])
    if not isinstance(keys, list) or len(keys) != len(params.dimensions) or \
            not all(isinstance(k, str) for k in keys):
        raise ValueError(f"keys does not hold one string per dimension ({len(params.dimensions)})")
    values = dict(zip(params.dimensions, keys, strict=True))
    if "date" in values and values["date"] != day.isoformat():
        raise ValueError(f"row of {values['date']} in the answer for {day.isoformat()}")
    raw = [row.get(name) for name in ("clicks", "impressions", "ctr", "position")]
    if not all(isinstance(m, int | float) and not isinstance(m, bool) for m in raw):
        raise ValueError("clicks, impressions, ctr and position must be numbers")
    try:
        metrics: list[float] = [float(m) for m in raw if isinstance(m, int | float)]
    except OverflowError:  # an integer beyond a float (JSON has no size limit)
        metrics = [math.inf]
    if not all(math.isfinite(m) for m in metrics):  # Infinity/NaN: the standard library's JSON reads them
        raise ValueError("clicks, impressions, ctr and position must be finite numbers")
    digest = hashlib.sha256(json.dumps(keys, ensure_ascii=False).encode()).hexdigest()[:32]
    dims = tuple(values.get(api) for api in DIMENSION_COLUMNS)
    return (site, params.search_type, ",".join(params.dimensions), day, digest, *dims,
            round(metrics[0]), round(metrics[1]), float(metrics[2]), float(metrics[3]), params.data_state)


# ---------------------------------------------------------------------------------------- the API


@dataclass
class SearchConsole:
    """The calls of one run to the Search Console API."""

    client: HttpClient
    sites_client: HttpClient
    params: GscParams

    async def sites(self) -> list[str]:
        """The configured sites, or every verified site of the credential for ``"all"``."""
        if self.params.sites != "all":
            return list(self.params.sites)
        body = await self.sites_client.request_json("GET", f"{self.params.base_url}/webmasters/v3/sites")
        entries = body.get("siteEntry", []) if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise TransientError("the Search Console sites list has no siteEntry array")
        return sorted(str(e["siteUrl"]) for e in entries if isinstance(e, dict) and "siteUrl" in e
                      and e.get("permissionLevel") != "siteUnverifiedUser")

    async def query(self, site: str, first: dt.date, last: dt.date, dimensions: list[str],
                    start_row: int = 0) -> list[Any]:
        """One page of rows (an empty list when the answer has no ``rows``)."""
        url = f"{self.params.base_url}/webmasters/v3/sites/{quote(site, safe='')}/searchAnalytics/query"
        body = {"startDate": first.isoformat(), "endDate": last.isoformat(), "dimensions": dimensions,
                "type": self.params.search_type, "dataState": self.params.data_state,
                "rowLimit": self.params.row_limit, "startRow": start_row}
        answer = await self.client.request_json("POST", url, json=body, idempotent=True)
        rows = answer.get("rows", []) if isinstance(answer, dict) else None
        if not isinstance(rows, list):
            raise TransientError(f"invalid Search Console answer for {site}: not an object with a rows array")
        return rows

    async def days_with_data(self, site: str, first: dt.date, last: dt.date) -> list[dt.date]:
        """The days in ``first..last`` the API has data for (a query grouped by date alone)."""
        days: set[dt.date] = set()
        start_row = 0
        while True:
            rows = await self.query(site, first, last, ["date"], start_row)
            for row in rows:
                keys = row.get("keys") if isinstance(row, dict) else None
                if isinstance(keys, list) and keys:
                    days.add(dt.date.fromisoformat(str(keys[0])))
            if len(rows) < self.params.row_limit:
                return sorted(d for d in days if first <= d <= last)
            start_row += len(rows)

    async def day(self, site: str, day: dt.date) -> tuple[list[Any], bool]:
        """Every row of one day (paging until a short page) and whether the row cap was reached."""
        rows: list[Any] = []
        while True:
            page = await self.query(site, day, day, list(self.params.dimensions), len(rows))
            rows += page
            if len(page) < self.params.row_limit or len(rows) >= self.params.row_cap:
                return rows, len(rows) >= self.params.row_cap


# ---------------------------------------------------------------------------------------- handler


@dataclass
class RunPlan:
    """What one run reads: per site its days, and the checkpoint it carries forward."""

    incremental: bool
    cursor: dict[str, str] = field(default_factory=dict)
    capped: list[dict[str, Any]] = field(default_factory=list)


def first_day(params: GscParams, cursor: Mapping[str, str], site: str, today: dt.date) -> dt.date:
    """Where an incremental run of ``site`` starts: after its checkpoint minus ``refresh_days``, or
    ``initial_days`` back; never more than 16 months back."""
    done = cursor.get(site)
    start = (dt.date.fromisoformat(done) - dt.timedelta(days=params.refresh_days - 1) if done
             else today - dt.timedelta(days=params.initial_days))
    return max(start, months_back(today, HISTORY_MONTHS))


async def fetched_in_order(api: SearchConsole, site: str, days: list[dt.date], with_data: set[dt.date],
                           ) -> AsyncIterator[tuple[dt.date, list[Any], bool]]:
    """``(day, rows, capped)`` for each day in order, with up to :data:`DAYS_AHEAD` days in flight (the
    rate limiter paces them); a day without data is not queried. Unfinished fetches are cancelled when
    the reader stops."""
    async def fetch(day: dt.date) -> tuple[dt.date, list[Any], bool]:
        rows, capped = await api.day(site, day) if day in with_data else ([], False)
        return day, rows, capped

    pending: collections.deque[asyncio.Task[tuple[dt.date, list[Any], bool]]] = collections.deque()
    try:
        for day in days:
            pending.append(asyncio.ensure_future(fetch(day)))
            if len(pending) >= DAYS_AHEAD:
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class GscHandler(Handler):
    type = "gsc"
    display_name = "Google Search Console analytics"
    Params = GscParams
    streams = (Stream(name=STREAM, table="gsc_search_analytics",
                      key_columns=("site", "search_type", "dimension_set", "date", "dims_hash"),
                      value_columns=("query", "page", "country", "device", "search_appearance", "clicks",
                                     "impressions", "ctr", "position", "data_state"),
                      conflict="update", scope="job", bookkeeping_columns=("fetched_at",)),)
    default_interval_minutes = None
    default_cron = "30 9 * * *"
    accepts_windows = True
    default_rate_limits = RATE_LIMITS

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        p: GscParams = params
        oauth = p.credentials()
        api = SearchConsole(ctx.http(p.namespace(), oauth=oauth), ctx.http(SITES_NAMESPACE, oauth=oauth), p)
        stored = ctx.checkpoint(STREAM)
        plan = RunPlan(incremental=p.start is None,
                       cursor=dict(stored.get("sites", {})) if isinstance(stored, dict) else {})
        today = today_pacific()
        sites = await api.sites()
        ctx.log.info("gsc_sites", sites=len(sites), incremental=plan.incremental)
        for n, site in enumerate(sites):
            first, last = (p.start, min(p.end, today)) if p.start and p.end else \
                (first_day(p, plan.cursor, site, today), today)
            with_data = await api.days_with_data(site, first, last) if first <= last else []
            newest = max(with_data, default=first - dt.timedelta(days=1))
            days = [first + dt.timedelta(days=i) for i in range((newest - first).days + 1)]
            async for day, rows, capped in fetched_in_order(api, site, days, set(with_data)):
                yield self._day_batch(p, plan, site, day, rows, capped)
            ctx.report_progress(done=n + 1, total=len(sites))

    @staticmethod
    def _day_batch(p: GscParams, plan: RunPlan, site: str, day: dt.date, rows: list[Any], capped: bool,
                   ) -> Batch:
        """One day of one site: its rows replace the day's rows; the checkpoint moves (incrementally)."""
        records: list[tuple[Any, ...]] = []
        rejected: list[Rejected] = []
        for row in rows:
            try:
                records.append(row_record(site, p, day, row))
            except ValueError as exc:
                rejected.append(Rejected(raw=row, reason=f"invalid Search Console row: {exc}"))
        note = None
        if capped and len(plan.capped) < MAX_NOTED_DAYS:
            plan.capped.append({"site": site, "date": day.isoformat(), "rows": len(rows)})
            note = {"row_cap_days": list(plan.capped), "row_cap": p.row_cap}
        checkpoint: Any = NO_CHECKPOINT
        if plan.incremental:
            plan.cursor[site] = max(plan.cursor.get(site, ""), day.isoformat())
            checkpoint = {"sites": dict(plan.cursor)}
        scope = {"site": site, "search_type": p.search_type, "dimension_set": ",".join(p.dimensions),
                 "date": day}
        return Batch(stream=STREAM, records=records, rejected=rejected, checkpoint=checkpoint,
                     replace_scope=scope, items_checked=len(rows), run_result=note)
