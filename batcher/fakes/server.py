"""The lifecycle every fake upstream server shares: an aiohttp application on ``host:port`` (port 0 picks a
free one, read back after start), usable as an async context manager."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any, ClassVar, Self

from aiohttp import web


class FakeServer:
    """Subclasses set ``host`` and ``port`` and add their endpoints in :meth:`add_routes`."""

    host: str
    port: int
    backlog: ClassVar[int] = 128
    _runner: web.AppRunner | None = None

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def middlewares(self) -> list[Any]:
        return []

    def announcement(self) -> dict[str, Any]:
        """The first stdout line of :meth:`serve_until_signal` (subclasses add what their users need)."""
        return {"url": self.url}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=self.middlewares())
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=self.backlog)
        await site.start()
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_until_signal(self) -> None:
        """Serve as its own process until SIGTERM/SIGINT; the first stdout line is :meth:`announcement` as
        JSON."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with self:
            print(json.dumps(self.announcement()), flush=True)
            await stop.wait()
