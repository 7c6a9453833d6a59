"""A fake of GitHub's REST releases API (issue 18): in-process, or ``python -m batcher.fakes.github``.

Shapes as GitHub documents them (checked): ``GET /repos/{owner}/{repo}/releases/latest`` answers the
latest published full release (``tag_name``, ``name``, ``draft``, ``prerelease``, ``published_at``…) and
is 404 when the repository has only drafts or pre-releases; ``GET /repos/{owner}/{repo}/tags`` lists
``{"name", "commit": {"sha", "url"}, …}``. Every 200 carries an ``ETag``; a request whose
``If-None-Match`` matches answers 304 with no body. ``X-RateLimit-Limit`` is 60 anonymous and 5,000 with
a token; ``X-RateLimit-Remaining`` goes down by one per request, except a 304 on an authenticated request
(GitHub does not count those). ``X-RateLimit-Reset`` is epoch seconds.

Faults: an unknown repository is 404; ``throttle_next`` answers the next N requests with
``throttle_status`` (403 — primary limit, ``x-ratelimit-remaining: 0`` and the reset — or 429 with
``retry-after`` seconds, the secondary limit). ``log`` lists every request.

    async with FakeGitHub({"acme/app": [("v1.2.0", False), ("v1.3.0-rc1", True)]}) as gh:
        ...  # gh.url, gh.publish("acme/app", "v1.3.0"), gh.log
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from batcher.fakes.server import FakeServer

TOKEN = "ghp_fake_token"


class FakeGitHub(FakeServer):
    """``releases`` maps ``owner/repo`` to ``[(tag, prerelease)]`` oldest first; ``tags`` (optional) maps
    a repository to tag names served by ``/tags`` (default: the releases' tags, newest first)."""

    def __init__(self, releases: Mapping[str, Sequence[tuple[str, bool]]] | None = None, *,
                 tags: Mapping[str, Sequence[str]] | None = None, token: str = TOKEN, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.token = token  # the token that authenticates (any other is anonymous)
        self.releases = {r: list(v) for r, v in (releases or {}).items()}
        self.tags = {r: list(v) for r, v in (tags or {}).items()}
        self.throttle_next = 0
        self.throttle_status = 403
        self.remaining = {"anonymous": 60, "token": 5000}
        self.log: list[dict[str, Any]] = []
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    def publish(self, repository: str, tag: str, prerelease: bool = False) -> None:
        self.releases.setdefault(repository, []).append((tag, prerelease))


    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/repos/{owner}/{repo}/releases/latest", self._latest)
        app.router.add_get("/repos/{owner}/{repo}/tags", self._tags)

    async def _latest(self, request: web.Request) -> web.Response:
        def body(repository: str) -> Any:
            full = [t for t, pre in self.releases.get(repository, []) if not pre]
            if not full:
                return None
            return {"tag_name": full[-1], "name": full[-1], "draft": False, "prerelease": False,
                    "published_at": "2026-11-01T00:00:00Z",
                    "html_url": f"https://github.com/{repository}/releases/tag/{full[-1]}"}

        return self._answer(request, body)

    async def _tags(self, request: web.Request) -> web.Response:
        def body(repository: str) -> Any:
            names = self.tags.get(repository) or [t for t, _ in reversed(self.releases.get(repository, []))]
            return [{"name": n, "commit": {"sha": hashlib.sha1(n.encode()).hexdigest(), "url": ""},
                     "zipball_url": "", "tarball_url": ""} for n in names]

        return self._answer(request, body)

    def _answer(self, request: web.Request, make: Any) -> web.Response:
        repository = f"{request.match_info['owner']}/{request.match_info['repo']}"
        authorized = request.headers.get("Authorization", "") in (f"Bearer {self.token}", f"token {self.token}")
        entry: dict[str, Any] = {"path": request.path, "authorized": authorized,
                                 "if_none_match": request.headers.get("If-None-Match")}
        self.log.append(entry)
        answer = self._throttled(authorized)  # (a Response is a mapping: falsy when empty, so no `or`)
        if answer is None:
            answer = self._found(request, repository, make, authorized)
        entry["status"] = answer.status
        return answer

    def _limit_headers(self, authorized: bool) -> dict[str, str]:
        kind = "token" if authorized else "anonymous"
        return {"X-RateLimit-Limit": "5000" if authorized else "60",
                "X-RateLimit-Remaining": str(max(self.remaining[kind], 0)),
                "X-RateLimit-Reset": str(int(time.time()) + 3600), "X-RateLimit-Resource": "core"}

    def _throttled(self, authorized: bool) -> web.Response | None:
        if self.throttle_next <= 0:
            return None
        self.throttle_next -= 1
        if self.throttle_status == 429:
            return web.json_response({"message": "You have exceeded a secondary rate limit."}, status=429,
                                     headers={"retry-after": "1"})
        headers = {**self._limit_headers(authorized), "X-RateLimit-Remaining": "0",
                   "X-RateLimit-Reset": str(int(time.time()) + 1)}
        return web.json_response({"message": "API rate limit exceeded"}, status=403, headers=headers)

    def _found(self, request: web.Request, repository: str, make: Any, authorized: bool) -> web.Response:
        kind = "token" if authorized else "anonymous"
        body = make(repository) if repository in self.releases or repository in self.tags else None
        if body is None:
            self.remaining[kind] -= 1
            return web.json_response({"message": "Not Found", "status": "404"}, status=404,
                                     headers=self._limit_headers(authorized))
        text = json.dumps(body)
        etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'
        if request.headers.get("If-None-Match") == etag:
            if not authorized:
                self.remaining[kind] -= 1
            return web.Response(status=304, headers={"ETag": etag, **self._limit_headers(authorized)})
        self.remaining[kind] -= 1
        return web.Response(text=text, content_type="application/json",
                            headers={"ETag": etag, **self._limit_headers(authorized)})


async def serve(releases: Mapping[str, Sequence[tuple[str, bool]]], host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; prints the URL as one JSON line."""
    await FakeGitHub(releases, host=host, port=port).serve_until_signal()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batcher.fakes.github")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    releases = {"acme/app": [("v1.2.0", False), ("v1.3.0", False), ("v2.0.0-rc1", True)],
                "acme/prerelease-only": [("v0.1.0-beta", True)]}
    asyncio.run(serve(releases, args.host, args.port))


if __name__ == "__main__":
    main()
