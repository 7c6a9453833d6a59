"""The ``docker-hub-pull`` handler: Docker Hub repository tags → ``docker_image_tags``, digest changes →
``docker_image_updates`` (issue 18; the original "Docker Hub Pull" job).

For each repository of ``repositories`` (``library/nginx``, ``org/app``) it pages through
``GET {base_url}/v2/repositories/{namespace}/{repo}/tags?page_size=100``, following the absolute ``next``
URL, and records each tag's digest, architectures, size and last-updated time. A tag whose digest differs
from the stored one is an update: one ``docker_image_updates`` row (old digest, new digest, seen at).
A tag seen for the first time is checked, not updated.

- Credentials are optional: ``username`` + ``access_token`` (a ``Secret``: ``access_token_env``) are
  exchanged at ``POST {base_url}/v2/auth/token`` (``{identifier, secret}``) for a bearer token that Docker
  Hub keeps valid for 10 minutes; it is renewed after :data:`TOKEN_LIFETIME_S`. Anonymous access works.
- Namespace ``dockerhub:api:`` (``dockerhub:api:anonymous:`` or ``dockerhub:api:user:{username}:``,
  since Docker Hub limits per account or per IP), paced by default by :data:`API_RATE_LIMIT` (3/s).
- A repository that does not exist (404), or anonymous paging that Docker Hub refuses (403 "pagination
  offset too large for anonymous requests"), is an error of that item: recorded in the run's result, the
  other repositories go on, the run succeeds. Other failures fail the run as usual.
- The run's ``result`` is the original shape ``{itemsChecked, itemsUpdated, logs, error}``.

Per page, the update rows are committed before the tags: a run that dies between the two commits
records the change again on its retry, and the update key (with the root run id) makes that a no-op.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from batcher import Batch, Handler, HandlerParams, PermanentError, RateLimit, RunContext, Secret, Stream

TYPE = "docker-hub-pull"
TAGS, UPDATES = "docker_image_tags", "docker_image_updates"
PAGE_SIZE = 100  # Docker Hub's maximum
TOKEN_LIFETIME_S = 8 * 60  # Docker Hub's tokens last 10 minutes: renew with 2 minutes to spare
MAX_LOGS = 100
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*/[a-z0-9]+(?:[._-][a-z0-9]+)*$")

API_NAMESPACE = "dockerhub:api:"  # + "anonymous:" or "user:<name>:" (namespace_for)
#: Docker Hub API: no published number; the overall per-IP limit is "in the order of thousands of
#: requests per minute" (https://docs.docker.com/docker-hub/usage/). Assumed: 3 requests/s.
API_RATE_LIMIT = RateLimit(interval_ms=1_000, max_in_interval=3)
#: The handler's default rate limits (``DockerHubPullHandler.default_rate_limits``); a TOML entry overrides one.
RATE_LIMITS = {API_NAMESPACE: API_RATE_LIMIT}

SQL_KNOWN_DIGESTS = "SELECT tag, digest FROM docker_image_tags WHERE repository = $1"


class DockerHubParams(HandlerParams):
    """``repositories`` (``namespace/repo``), ``base_url``, optional ``username`` + ``access_token``."""

    repositories: list[str] = Field(default_factory=list, max_length=1000)
    base_url: str = "https://hub.docker.com"
    username: str | None = None
    access_token: Secret | None = None
    max_pages: int = Field(100, ge=1, le=10_000)

    @field_validator("repositories")
    @classmethod
    def _repository_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _REPOSITORY.match(name):
                raise ValueError(f"{name!r} is not namespace/repository (official images: library/NAME)")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class _Image(BaseModel):
    model_config = ConfigDict(extra="ignore")
    architecture: str | None = None


class _Tag(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    digest: str | None = None
    images: list[_Image] = Field(default_factory=list)
    full_size: int | None = None
    last_updated: dt.datetime | None = None


class _Page(BaseModel):
    model_config = ConfigDict(extra="ignore")
    next: str | None = None
    results: list[_Tag]


class RunReport:
    """The run's result in the original shape: items checked and updated, log lines, errors."""

    def __init__(self) -> None:
        self.checked = self.updated = 0
        self.logs: list[str] = []
        self.errors: list[str] = []

    def log(self, line: str) -> None:
        if len(self.logs) < MAX_LOGS:
            self.logs.append(line)

    def fail_item(self, item: str, reason: str) -> None:
        self.errors.append(f"{item}: {reason}")
        self.log(f"{item}: error: {reason}")

    def as_result(self) -> dict[str, Any]:
        return {"itemsChecked": self.checked, "itemsUpdated": self.updated, "logs": self.logs,
                "error": "; ".join(self.errors) or None}


class DockerHubAuth:
    """The bearer token of ``username``/``access_token``, fetched on first use and renewed in time."""

    def __init__(self, http: Any, base_url: str, username: str | None, secret: str | None) -> None:
        self._http, self._url = http, f"{base_url}/v2/auth/token"
        self._username, self._secret = username, secret
        self._token: str | None = None
        self._expires = 0.0

    @property
    def authorized(self) -> bool:
        return self._username is not None and self._secret is not None

    async def headers(self) -> dict[str, str]:
        if not self.authorized:
            return {}
        if self._token is None or time.monotonic() >= self._expires:
            body = await self._http.request_json("POST", self._url, idempotent=True,
                                                 json={"identifier": self._username, "secret": self._secret})
            token = body.get("access_token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise PermanentError("Docker Hub's token answer has no access_token")
            self._token, self._expires = token, time.monotonic() + TOKEN_LIFETIME_S
        return {"Authorization": f"Bearer {self._token}"}


def namespace_for(params: DockerHubParams) -> str:
    return f"{API_NAMESPACE}user:{params.username}:" if params.username and params.access_token else \
        f"{API_NAMESPACE}anonymous:"


def item_error(exc: PermanentError, authorized: bool) -> str | None:
    """The reason to record for a repository, or None when the failure should fail the run."""
    status = getattr(exc, "status", None)
    if status == 404:
        return "repository not found (HTTP 404)"
    if status == 403 and not authorized:
        return "Docker Hub refused deeper anonymous paging (HTTP 403: pagination offset too large); " \
               "set username and access_token to read every tag"
    return None


class DockerHubPullHandler(Handler):
    """Tags and digests of Docker Hub repositories, with the history of digest changes."""

    type = TYPE
    display_name = "Docker Hub Pull"
    Params = DockerHubParams
    streams = (
        Stream(name=TAGS, table="docker_image_tags", key_columns=("repository", "tag"),
               value_columns=("digest", "architectures", "size_bytes", "last_updated"),
               conflict="update_if_changed", bookkeeping_columns=("updated_at",), json_columns=("architectures",)),
        Stream(name=UPDATES, table="docker_image_updates",
               key_columns=("repository", "tag", "new_digest", "root_run_id"), value_columns=("old_digest",),
               conflict="ignore", bookkeeping_columns=("seen_at",)),
    )
    default_interval_minutes = 60
    default_rate_limits = RATE_LIMITS

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        p: DockerHubParams = params
        http = ctx.http(namespace_for(p))
        secret = p.access_token.get_secret_value() if p.access_token is not None else None
        auth = DockerHubAuth(http, p.base_url, p.username, secret)
        report = RunReport()
        for repository in p.repositories:
            try:
                async for batch in self.repository_batches(ctx, http, auth, p, repository, report):
                    yield batch
            except PermanentError as exc:
                reason = item_error(exc, auth.authorized)
                if reason is None:
                    raise
                report.fail_item(repository, reason)
                ctx.log.warning("dockerhub_repository_failed", repository=repository, reason=reason)
            ctx.report_result(report.as_result())
        ctx.report_result(report.as_result())

    async def repository_batches(self, ctx: RunContext, http: Any, auth: DockerHubAuth, p: DockerHubParams,
                                 repository: str, report: RunReport) -> AsyncIterator[Batch]:
        known = {r["tag"]: r["digest"] for r in await ctx.postgres.fetch(SQL_KNOWN_DIGESTS, repository)}
        url: str | None = f"{p.base_url}/v2/repositories/{quote(repository)}/tags?page_size={PAGE_SIZE}"
        checked = updated = pages = 0
        while url is not None and pages < p.max_pages:
            page = await http.get_json(url, headers=await auth.headers(), validate=_Page.model_validate)
            pages += 1
            tags = [(repository, t.name, t.digest, sorted({i.architecture for i in t.images if i.architecture}),
                     t.full_size, t.last_updated) for t in page.results]
            changes = [(repository, t.name, t.digest, ctx.root_run_id, known[t.name]) for t in page.results
                       if t.name in known and t.digest and known[t.name] != t.digest]
            if changes:
                yield Batch(stream=UPDATES, records=changes, items_updated=len(changes))
            yield Batch(stream=TAGS, records=tags, items_checked=len(tags))
            checked, updated = checked + len(tags), updated + len(changes)
            report.checked, report.updated = report.checked + len(tags), report.updated + len(changes)
            url = page.next
        report.log(f"{repository}: {checked} tags checked, {updated} updated")
        ctx.log.info("dockerhub_repository_done", repository=repository, tags=checked, updated=updated,
                     pages=pages)
