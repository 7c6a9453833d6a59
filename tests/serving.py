"""Serving a test's own aiohttp application (a fake upstream) on 127.0.0.1 for the length of a block."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def serve(app: web.Application, **runner_options: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1; yields its base URL (``http://127.0.0.1:PORT``).
    ``runner_options`` go to ``web.AppRunner`` (``shutdown_timeout`` defaults to 0.5 s)."""
    runner = web.AppRunner(app, **{"shutdown_timeout": 0.5, **runner_options})
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
