"""Fake upstream servers for tests, for the length of a block: the test's own aiohttp application served
in-process on 127.0.0.1 (:func:`serve`), or one of ``batcher.fakes`` as its own process
(:func:`fake_process`), for tests that block on batcher processes and so cannot serve in-process."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parents[1]


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


@contextlib.contextmanager
def fake_process(module: str, options: Mapping[str, Any]) -> Iterator[str]:
    """``python -m batcher.fakes.<module> --options JSON`` in its own session; yields the URL it announces
    on its first stdout line, and kills it at exit."""
    proc = subprocess.Popen([sys.executable, "-m", f"batcher.fakes.{module}", "--options", json.dumps(options)],
                            cwd=REPO, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())["url"]
    finally:
        proc.kill()
        proc.wait(10)
