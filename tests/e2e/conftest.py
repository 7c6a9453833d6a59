"""End-to-end fixtures: real batcher processes, killed at the end of the test if still alive."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.procs import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Append every Proc a test starts; all are closed (SIGKILL to their group if alive) afterwards."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.close()
