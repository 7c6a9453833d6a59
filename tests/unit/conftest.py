"""Fixtures shared by the unit tests of the HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from batcher.http import HttpRuntime


@pytest.fixture
async def runtime() -> AsyncIterator[HttpRuntime]:
    """An HTTP runtime with no rate limits, no Redis and millisecond backoffs (a module may define its own)."""
    rt = HttpRuntime({}, None, backoff_base_s=0.001, backoff_max_s=0.002)
    await rt.start()
    yield rt
    await rt.close()
