"""A fake of the Docker Hub API (issue 18): in-process, or ``python -m batcher.fakes.dockerhub --port N``.

Shapes as Docker Hub's API reference documents them (checked): ``GET /v2/repositories/{namespace}/{repo}/
tags?page_size=N&page=P`` answers ``{"count", "next", "previous", "results"}`` where ``next`` is an
absolute URL (or null) and each result has ``name``, a tag-level ``digest``, ``images`` (an array of
``{architecture, os, digest, size, …}``), ``full_size`` and ``last_updated``; ``page_size`` is capped at
100. ``POST /v2/auth/token`` with ``{"identifier", "secret"}`` answers ``{"access_token"}`` (a JWT-like
string valid for 10 minutes upstream).

Faults a test can set: an unknown repository is 404 ``{"message": "object not found"}``; anonymous
requests deeper than ``anonymous_max_page`` answer 403 ("pagination offset too large for anonymous
requests"); ``rate_limit_next`` answers the next N tag requests with 429 and the retry hint in
``rate_limit_header`` (``Retry-After`` seconds, ``retry-after`` epoch or ``X-Retry-After`` epoch).
:meth:`FakeDockerHub.set_digest` changes a tag's digest between runs. ``log`` lists every request.

    async with FakeDockerHub({"library/nginx": {"latest": "sha256:a", "1.27": "sha256:b"}}) as hub:
        ...  # hub.url, hub.set_digest("library/nginx", "latest", "sha256:c"), hub.log
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from batcher.fakes.server import FakeServer

MAX_PAGE_SIZE = 100
TOKEN_PREFIX = "fake-dockerhub-token-"


def _tag(repository: str, name: str, digest: str, index: int) -> dict[str, Any]:
    archs = ("amd64", "arm64") if index % 2 == 0 else ("amd64",)
    images = [{"architecture": a, "os": "linux", "digest": f"{digest}-{a}", "size": 1000 + index,
               "status": "active", "variant": None, "last_pushed": "2026-11-01T00:00:00Z"} for a in archs]
    return {"id": index + 1, "name": name, "digest": digest, "images": images, "full_size": 1000 + index,
            "last_updated": f"2026-11-{1 + index % 28:02d}T12:00:00.000000Z", "repository": repository,
            "tag_status": "active", "v2": True, "media_type": "application/vnd.oci.image.index.v1+json",
            "content_type": "image"}


class FakeDockerHub(FakeServer):
    """The fake server; ``repositories`` maps ``namespace/repo`` to ``{tag: digest}``."""

    def __init__(self, repositories: Mapping[str, Mapping[str, str]] | None = None, *, username: str = "alice",
                 secret: str = "dckr_pat_fake", anonymous_max_page: int = 0, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.repositories = {r: dict(tags) for r, tags in (repositories or {}).items()}
        self.username, self.secret = username, secret
        self.anonymous_max_page = anonymous_max_page  # 0: no limit
        self.rate_limit_next = 0
        self.rate_limit_header = "Retry-After"
        self.rate_limit_seconds = 1
        self.log: list[dict[str, Any]] = []
        self.tokens_issued = 0
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    def set_digest(self, repository: str, tag: str, digest: str) -> None:
        self.repositories[repository][tag] = digest


    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/repositories/{namespace}/{repo}/tags", self._tags)
        app.router.add_post("/v2/auth/token", self._token)

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.log.append({"path": request.path, "method": "POST", "status": 0})
        if body.get("identifier") != self.username or body.get("secret") != self.secret:
            self.log[-1]["status"] = 401
            return web.json_response({"detail": "Incorrect authentication credentials"}, status=401)
        self.tokens_issued += 1
        self.log[-1]["status"] = 200
        return web.json_response({"access_token": f"{TOKEN_PREFIX}{self.tokens_issued}"})

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "").startswith(f"Bearer {TOKEN_PREFIX}")

    async def _tags(self, request: web.Request) -> web.Response:
        repository = f"{request.match_info['namespace']}/{request.match_info['repo']}"
        page, size = int(request.query.get("page", "1")), min(int(request.query.get("page_size", "10")),
                                                              MAX_PAGE_SIZE)
        entry = {"path": request.path, "method": "GET", "page": page, "page_size": size,
                 "authorized": self._authorized(request), "status": 200}
        self.log.append(entry)
        answer = self._fault(request, repository, page)
        if answer is None:
            answer = web.json_response(self._page(request, repository, page, size))
        entry["status"] = answer.status
        return answer

    def _fault(self, request: web.Request, repository: str, page: int) -> web.Response | None:
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            value = str(self.rate_limit_seconds) if self.rate_limit_header == "Retry-After" else \
                str(int(time.time()) + self.rate_limit_seconds)
            return web.json_response({"message": "Too Many Requests"}, status=429,
                                     headers={self.rate_limit_header: value})
        if repository not in self.repositories:
            return web.json_response({"message": "object not found", "errinfo": {}}, status=404)
        if self.anonymous_max_page and page > self.anonymous_max_page and not self._authorized(request):
            return web.json_response({"message": "pagination offset too large for anonymous requests",
                                      "errinfo": {}}, status=403)
        return None

    def _page(self, request: web.Request, repository: str, page: int, size: int) -> dict[str, Any]:
        tags = sorted(self.repositories[repository].items())
        chunk = tags[(page - 1) * size: page * size]
        base = f"{self.url}/v2/repositories/{repository}/tags"
        more = page * size < len(tags)
        return {"count": len(tags),
                "next": f"{base}?page={page + 1}&page_size={size}" if more else None,
                "previous": f"{base}?page={page - 1}&page_size={size}" if page > 1 else None,
                "results": [_tag(repository, name, digest, (page - 1) * size + i)
                            for i, (name, digest) in enumerate(chunk)]}


async def serve(repositories: Mapping[str, Mapping[str, str]], host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; prints the URL as one JSON line."""
    await FakeDockerHub(repositories, host=host, port=port).serve_until_signal()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batcher.fakes.dockerhub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tags", type=int, default=150, help="tags of library/nginx (paged by 100)")
    args = parser.parse_args(argv)
    repositories = {"library/nginx": {f"1.{i}": f"sha256:{i:064x}" for i in range(args.tags)}}
    asyncio.run(serve(repositories, args.host, args.port))


if __name__ == "__main__":
    main()
