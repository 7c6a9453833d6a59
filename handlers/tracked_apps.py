"""The ``tracked-apps-check`` handler: each app of ``tracked_apps`` checked for a newer release (issue 18).

- ``github:owner/repo``: ``GET {github_base}/repos/{owner}/{repo}/releases/latest`` with the stored ETag
  in ``If-None-Match``: a 304 means unchanged and, with a ``github_token``, costs no rate-limit admission
  (GitHub counts a 304 only on anonymous requests). A repository with no full release (that endpoint is
  404 when there are only drafts or pre-releases) falls back to ``/tags``; an app that allows
  pre-releases reads ``/tags`` too, since ``releases/latest`` never answers one.
- ``docker:namespace/repo[:tag-pattern]``: the tags a ``docker-hub-pull`` job stored in
  ``docker_image_tags`` when such a job lists the repository, else Docker Hub's tags API (``docker_base``).
- Versions are compared with ``packaging.version`` (a leading ``v`` is fine); tags that are not versions
  (``latest``, ``alpine``) are ignored; pre-releases never count as newer unless the app opts in.
- ``update_available`` = latest > current version. An item counts as updated when its latest version
  differs from the one the previous check stored (the first check only records it).
- A repository that is not found is an error of that app (in the result); the others go on.

Namespaces: ``github:api:anonymous:`` (60 requests/hour) or ``github:api:token:{hash}:`` (5,000/hour), and
``dockerhub:api:anonymous:`` (the docker-hub-pull handler's 3/s): the defaults in :data:`RATE_LIMITS`.
The run's ``result`` is ``{itemsChecked, itemsUpdated, logs, error}``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

from packaging.version import Version
from pydantic import field_validator

from batcher import Batch, Handler, HandlerParams, PermanentError, RateLimit, RunContext, Secret, Stream
from handlers.dockerhub import API_NAMESPACE as DOCKER_HUB_NAMESPACE
from handlers.dockerhub import API_RATE_LIMIT as DOCKER_HUB_RATE_LIMIT
from handlers.dockerhub import TYPE as DOCKER_HUB_TYPE
from handlers.dockerhub import RunReport
from handlers.tracked_apps_admin import APPS_COMMANDS, APPS_ROUTES, parse_source, parse_version

TYPE = "tracked-apps-check"
STREAM = "tracked_apps"
BATCH = 50
DOCKER_MAX_PAGES = 10

SQL_APPS = """SELECT name, source, current_version, latest_version, allow_prerelease, etag
FROM tracked_apps ORDER BY name"""
SQL_COVERED = """SELECT EXISTS (SELECT 1 FROM batch_config WHERE job_type = $1 AND NOT orphaned
AND params->'repositories' ? $2)"""
SQL_STORED_TAGS = "SELECT tag FROM docker_image_tags WHERE repository = $1"


class TrackedAppsParams(HandlerParams):
    """``github_base``, optional ``github_token`` (secret), ``docker_base``."""

    github_base: str = "https://api.github.com"
    github_token: Secret | None = None
    docker_base: str = "https://hub.docker.com"

    @field_validator("github_base", "docker_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


def newest(names: Iterable[str], *, prerelease: bool, pattern: str | None = None) -> str | None:
    """The name with the highest version (matching the glob ``pattern``), pre-releases only if allowed."""
    best: tuple[Version, str] | None = None
    for name in names:
        version = parse_version(name)
        if version is None or (version.is_prerelease and not prerelease):
            continue
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        if best is None or version > best[0]:
            best = (version, name)
    return best[1] if best else None


GITHUB_NAMESPACE = "github:api:"
GITHUB_ANONYMOUS = f"{GITHUB_NAMESPACE}anonymous:"
#: The handler's default rate limits; a TOML entry overrides one.
RATE_LIMITS = {
    # GitHub REST API, authenticated: 5,000 requests per hour per user/token (primary limit).
    # https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api
    GITHUB_NAMESPACE: RateLimit(interval_ms=3_600_000, max_in_interval=5_000),
    # GitHub REST API, unauthenticated: 60 requests per hour per IP (same page). This handler uses this
    # namespace without a token, "github:api:token:<hash>:" with one.
    GITHUB_ANONYMOUS: RateLimit(interval_ms=3_600_000, max_in_interval=60),
    # Docker Hub, read anonymously ("dockerhub:api:anonymous:"): the docker-hub-pull handler's limit.
    DOCKER_HUB_NAMESPACE: DOCKER_HUB_RATE_LIMIT,
}


def github_namespace(token: str | None) -> str:
    if token is None:
        return GITHUB_ANONYMOUS
    return f"{GITHUB_NAMESPACE}token:{hashlib.sha256(token.encode()).hexdigest()[:12]}:"


class GitHubSource:
    """Latest versions from GitHub (conditional requests, tags fallback)."""

    def __init__(self, ctx: RunContext, params: TrackedAppsParams) -> None:
        self.token = params.github_token.get_secret_value() if params.github_token else None
        self.http = ctx.http(github_namespace(self.token))
        self.base = params.github_base
        self.headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if self.token:
            self.headers["Authorization"] = f"Bearer {self.token}"

    async def latest(self, repo: str, app: Any) -> tuple[str | None, str | None]:
        """(latest version, ETag to store)."""
        if not app["allow_prerelease"]:
            headers = {**self.headers, **({"If-None-Match": app["etag"]} if app["etag"] else {})}
            try:
                reply = await self.http.request("GET", f"{self.base}/repos/{repo}/releases/latest", headers=headers,
                                                free_not_modified=self.token is not None)
            except PermanentError as exc:
                if getattr(exc, "status", None) != 404:
                    raise
            else:
                if reply.status == 304:
                    return app["latest_version"], app["etag"]
                tag = (reply.json() or {}).get("tag_name")
                return (str(tag) if tag else None), reply.headers.get("ETag")
        tags = await self.http.get_json(f"{self.base}/repos/{repo}/tags", params={"per_page": "100"},
                                        headers=self.headers)
        names = [str(t.get("name")) for t in tags or () if isinstance(t, dict)]
        return newest(names, prerelease=app["allow_prerelease"]), None


class DockerSource:
    """Latest versions from Docker Hub tags: the stored ones when a docker-hub-pull job covers the
    repository, else read here."""

    def __init__(self, ctx: RunContext, params: TrackedAppsParams) -> None:
        self.ctx, self.base = ctx, params.docker_base
        self.http = ctx.http(f"{DOCKER_HUB_NAMESPACE}anonymous:")

    async def tags(self, repo: str) -> list[str]:
        pool = self.ctx.postgres
        if await pool.fetchval(SQL_COVERED, DOCKER_HUB_TYPE, repo):
            stored = [r["tag"] for r in await pool.fetch(SQL_STORED_TAGS, repo)]
            if stored:
                return stored
        names: list[str] = []
        url: str | None = f"{self.base}/v2/repositories/{repo}/tags?page_size=100"
        for _ in range(DOCKER_MAX_PAGES):
            if url is None:
                break
            page = await self.http.get_json(url)
            names += [str(t.get("name")) for t in page.get("results") or () if isinstance(t, dict)]
            url = page.get("next")
        return names

    async def latest(self, repo: str, pattern: str | None, app: Any) -> tuple[str | None, str | None]:
        return newest(await self.tags(repo), prerelease=app["allow_prerelease"], pattern=pattern), None


class TrackedAppsHandler(Handler):
    """Checks every tracked app for a newer release."""

    type = TYPE
    display_name = "Tracked Apps Check"
    Params = TrackedAppsParams
    streams = (Stream(name=STREAM, table="tracked_apps", key_columns=("name",),
                      value_columns=("source", "current_version", "latest_version", "update_available",
                                     "allow_prerelease", "etag"),
                      conflict="update", bookkeeping_columns=("checked_at",)),)
    default_interval_minutes = 30
    default_rate_limits = RATE_LIMITS
    cli_commands = APPS_COMMANDS
    api_routes = APPS_ROUTES

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        p: TrackedAppsParams = params
        github, docker = GitHubSource(ctx, p), DockerSource(ctx, p)
        report = RunReport()
        records: list[tuple[Any, ...]] = []
        updated = 0
        for app in await ctx.postgres.fetch(SQL_APPS):
            record = await self.check(app, github, docker, report)
            if record is not None:
                records.append(record)
                updated += int(app["latest_version"] is not None and record[3] != app["latest_version"])
            if len(records) >= BATCH:
                yield self.batch(records, updated, report, ctx)
                records, updated = [], 0
        if records:
            yield self.batch(records, updated, report, ctx)
        ctx.report_result(report.as_result())

    @staticmethod
    def batch(records: list[tuple[Any, ...]], updated: int, report: RunReport, ctx: RunContext) -> Batch:
        report.checked += len(records)
        report.updated += updated
        ctx.report_result(report.as_result())
        return Batch(stream=STREAM, records=records, items_checked=len(records), items_updated=updated)

    async def check(self, app: Any, github: GitHubSource, docker: DockerSource,
                    report: RunReport) -> tuple[Any, ...] | None:
        kind, repo, pattern = parse_source(app["source"])
        try:
            latest, etag = await (github.latest(repo, app) if kind == "github" else docker.latest(repo, pattern, app))
        except PermanentError as exc:
            if getattr(exc, "status", None) not in (404, 403):
                raise
            report.fail_item(app["name"], f"{app['source']}: not found or not readable (HTTP {exc.status})")  # type: ignore[attr-defined]
            return None
        current, newer = parse_version(app["current_version"]), parse_version(latest)
        available = current is not None and newer is not None and newer > current
        report.log(f"{app['name']}: latest {latest or 'unknown'}"
                   f"{' (update available)' if available else ''}")
        return (app["name"], app["source"], app["current_version"], latest, available, app["allow_prerelease"],
                etag)
