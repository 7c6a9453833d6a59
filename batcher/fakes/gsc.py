"""A fake Google Search Console API with its OAuth2 token endpoint (issue 16): in-process, or
``python -m batcher.fakes.gsc``.

This module owns the fake: sites with permission levels, deterministic rows per (site, day) (the
``keys`` follow the requested dimensions), ``startRow``/``rowLimit`` paging with a per-day row cap, days
without data (no ``rows`` key, as Google answers), faults by request number (429, Google's 403
``rateLimitExceeded``/``quotaExceeded``, 500/503), latency, and the token endpoint: the ``refresh_token``
grant, access tokens that expire after ``token_ttl_requests`` API calls (401 afterwards), a revoked
refresh token (``400 invalid_grant``) and a count of token requests.

- ``POST /token`` — form ``grant_type=refresh_token, client_id, client_secret, refresh_token``.
- ``GET /webmasters/v3/sites`` — ``{"siteEntry": [{"siteUrl", "permissionLevel"}]}``.
- ``POST /webmasters/v3/sites/{site}/searchAnalytics/query`` — the search analytics query.
- ``GET /_control/log`` (the request log), ``POST /_control/options`` (change :class:`GscOptions`).

Data: ``days_with_data`` days ending ``lag_days`` before today (Pacific Time) have ``rows_per_day`` rows
each, except the days in ``empty_days`` (offsets back from today); :meth:`FakeGsc.set_day` replaces one
day's rows (changed and vanished rows for re-read tests).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from aiohttp import web

from batcher.fakes.server import FakeServer

_FACETS = (("café crème", "https://a.example/menu"), ("日本語 検索", "https://a.example/jp"),
           ("emoji 🎉", "https://a.example/party"), ("plain query", "https://a.example/"))
_COUNTRIES = ("usa", "deu", "jpn", "fra")
_DEVICES = ("DESKTOP", "MOBILE", "TABLET")


@dataclass(frozen=True)
class GscOptions:
    """How the fake behaves (every field can be changed at run time)."""

    sites: dict[str, str] = field(default_factory=lambda: {"https://a.example/": "siteOwner"})
    client_id: str = "client-1"
    client_secret: str = "client-secret"
    refresh_token: str = "refresh-token"
    revoked: bool = False  # the refresh token answers 400 invalid_grant
    expires_in: int = 3600
    token_ttl_requests: int = 0  # an access token is rejected (401) after this many API calls (0: never)
    days_with_data: int = 40
    lag_days: int = 2
    rows_per_day: int = 5
    empty_days: tuple[int, ...] = ()  # offsets back from today with no data at all
    row_cap: int = 50_000
    max_row_limit: int = 25_000
    latency_ms: float = 0.0
    rate_limit_every: int = 0  # every Nth query is throttled: 429, 403 rateLimitExceeded, 403 quotaExceeded
    error_every: int = 0  # every Nth query (not throttled) is a 500/503


def today_pacific() -> dt.date:
    return dt.datetime.now(dt.UTC).astimezone(ZoneInfo("America/Los_Angeles")).date()


def make_row(site: str, day: dt.date, index: int, version: int = 0) -> dict[str, Any]:
    """Row ``index`` of a day: every dimension value, and metrics (``version`` changes the metrics)."""
    query, page = _FACETS[index % len(_FACETS)]
    seed = sum(map(ord, site)) + day.toordinal() + index + version * 7
    impressions = 100 + seed % 900
    clicks = seed % 50
    return {"date": day.isoformat(), "query": f"{query} {index}", "page": f"{page}?n={index}",
            "country": _COUNTRIES[index % len(_COUNTRIES)], "device": _DEVICES[index % len(_DEVICES)],
            "searchAppearance": "WEBLITE" if index % 5 == 0 else "NONE",
            "clicks": float(clicks), "impressions": float(impressions), "ctr": clicks / impressions,
            "position": 1.0 + (seed % 300) / 10}


class FakeGsc(FakeServer):
    """The fake server. ``log`` lists API requests (``kind``, ``site``, ``body``, ``status``);
    ``token_requests`` counts token grants (``issued`` every access token handed out)."""

    def __init__(self, options: GscOptions | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.options = options or GscOptions()
        self.host, self.port = host, port
        self.log: list[dict[str, Any]] = []
        self.token_requests = 0
        self.issued: list[str] = []
        self._valid: dict[str, int] = {}  # access token -> API calls made with it
        self._days: dict[tuple[str, dt.date], list[dict[str, Any]]] = {}
        self._queries = 0
        self._runner: web.AppRunner | None = None

    # -- data --------------------------------------------------------------------------------------
    def data_days(self) -> list[dt.date]:
        """The days that have data (oldest first)."""
        o, today = self.options, today_pacific()
        return [today - dt.timedelta(days=o.lag_days + i) for i in reversed(range(o.days_with_data))
                if o.lag_days + i not in o.empty_days]

    def rows(self, site: str, day: dt.date) -> list[dict[str, Any]]:
        """A day's rows, sorted by clicks descending (as Google does), before the row cap."""
        if (site, day) in self._days:
            return self._days[(site, day)]
        if site not in self.options.sites or day not in self.data_days():
            return []
        rows = [make_row(site, day, i) for i in range(self.options.rows_per_day)]
        return sorted(rows, key=lambda r: (-r["clicks"], r["query"]))

    def set_day(self, site: str, day: dt.date, rows: list[dict[str, Any]]) -> None:
        self._days[(site, day)] = rows

    def configure(self, **changes: Any) -> None:
        self.options = replace(self.options, **changes)

    # -- server ------------------------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    def announcement(self) -> dict[str, Any]:
        return {"url": self.url, "token_url": self.token_url}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self._token)
        app.router.add_get("/webmasters/v3/sites", self._sites)
        app.router.add_post("/webmasters/v3/sites/{site}/searchAnalytics/query", self._query)
        app.router.add_get("/_control/log", self._get_log)
        app.router.add_post("/_control/options", self._post_options)

    # -- endpoints ---------------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        o = self.options
        form = await request.post()
        self.token_requests += 1
        if form.get("client_id") != o.client_id or form.get("client_secret") != o.client_secret:
            return web.json_response({"error": "invalid_client", "error_description": "Unauthorized"},
                                     status=401)
        if o.revoked or form.get("refresh_token") != o.refresh_token or \
                form.get("grant_type") != "refresh_token":
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "Token has been expired or revoked."}, status=400)
        token = f"ya29.fake-{self.token_requests}-{time.monotonic_ns()}"
        self.issued.append(token)
        self._valid[token] = 0
        return web.json_response({"access_token": token, "expires_in": o.expires_in,
                                  "scope": "https://www.googleapis.com/auth/webmasters.readonly",
                                  "token_type": "Bearer"})

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        ttl = self.options.token_ttl_requests
        if token not in self._valid or (ttl and self._valid[token] >= ttl):
            return web.json_response({"error": {"code": 401, "status": "UNAUTHENTICATED",
                                                "message": "Request had invalid authentication credentials."}},
                                     status=401)
        self._valid[token] += 1
        return None

    async def _sites(self, request: web.Request) -> web.Response:
        self.log.append({"kind": "sites", "t": time.time()})
        if (denied := self._unauthorized(request)) is not None:
            return denied
        return web.json_response({"siteEntry": [{"siteUrl": s, "permissionLevel": p}
                                                for s, p in self.options.sites.items()]})

    async def _query(self, request: web.Request) -> web.Response:
        o = self.options
        body = await request.json()
        entry: dict[str, Any] = {"kind": "query", "t": time.time(), "site": unquote(request.match_info["site"]),
                                 "body": body}
        self.log.append(entry)
        if o.latency_ms:
            await asyncio.sleep(o.latency_ms / 1000)
        response = self._unauthorized(request)  # (a Response is a mapping: empty ones are falsy)
        if response is None:
            response = self._fault()
        if response is None:
            response = self._answer(entry["site"], body)
        entry["status"] = response.status
        return response

    def _fault(self) -> web.Response | None:
        o = self.options
        self._queries += 1
        n = self._queries
        if o.rate_limit_every and n % o.rate_limit_every == 0:
            kind = (n // o.rate_limit_every - 1) % 3  # 429 first
            if kind == 0:
                return web.json_response({"error": {"code": 429, "message": "Too many requests"}}, status=429,
                                         headers={"Retry-After": "0"})
            reason = "rateLimitExceeded" if kind == 1 else "quotaExceeded"
            return web.json_response({"error": {"code": 403, "message": "Quota exceeded", "errors": [
                {"domain": "usageLimits", "reason": reason, "message": "Quota exceeded"}]}}, status=403)
        if o.error_every and n % o.error_every == 0:
            return web.json_response({"error": {"code": 500, "message": "Backend Error"}},
                                     status=500 if n % 2 else 503)
        return None

    def _answer(self, site: str, body: dict[str, Any]) -> web.Response:
        o = self.options
        if site not in o.sites or o.sites[site] == "siteUnverifiedUser":
            return web.json_response({"error": {"code": 403, "message": f"User does not have sufficient "
                                                f"permission for site '{site}'."}}, status=403)
        first, last = dt.date.fromisoformat(body["startDate"]), dt.date.fromisoformat(body["endDate"])
        limit, start = int(body.get("rowLimit", 1000)), int(body.get("startRow", 0))
        if not 1 <= limit <= o.max_row_limit:
            return web.json_response({"error": {"code": 400, "message": "rowLimit out of range"}}, status=400)
        dims = list(body.get("dimensions") or [])
        rows = self._rows(site, first, last, dims)[start:start + limit]
        answer: dict[str, Any] = {"responseAggregationType": "byProperty"}
        if rows:
            answer["rows"] = rows
        return web.json_response(answer)

    def _rows(self, site: str, first: dt.date, last: dt.date, dims: list[str]) -> list[dict[str, Any]]:
        days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        if dims == ["date"]:
            return [{"keys": [d.isoformat()], "clicks": sum(r["clicks"] for r in rows),
                     "impressions": sum(r["impressions"] for r in rows), "ctr": 0.05, "position": 5.0}
                    for d in days if (rows := self.rows(site, d))]
        out: list[dict[str, Any]] = []
        for d in days:
            for row in self.rows(site, d)[:self.options.row_cap]:
                out.append({"keys": [row[name] for name in dims],
                            **{m: row[m] for m in ("clicks", "impressions", "ctr", "position")}})
        return out

    async def _get_log(self, request: web.Request) -> web.Response:
        return web.json_response({"log": self.log, "token_requests": self.token_requests})

    async def _post_options(self, request: web.Request) -> web.Response:
        changes = await request.json()
        known = {f.name for f in fields(GscOptions)}
        if not isinstance(changes, dict) or set(changes) - known:
            return web.json_response({"error": f"unknown options; known: {sorted(known)}"}, status=400)
        if "empty_days" in changes:
            changes["empty_days"] = tuple(changes["empty_days"])
        self.configure(**changes)
        return web.json_response(asdict(self.options))


async def serve(options: GscOptions, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; the first stdout line is ``{"url": …, "token_url": …}``."""
    await FakeGsc(options, host=host, port=port).serve_until_signal()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batcher.fakes.gsc",
                                     description="A fake Google Search Console API and token endpoint.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--options", default="{}", help="GscOptions fields as a JSON object")
    args = parser.parse_args(argv)
    options = json.loads(args.options)
    if "empty_days" in options:
        options["empty_days"] = tuple(options["empty_days"])
    asyncio.run(serve(GscOptions(**options), args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
