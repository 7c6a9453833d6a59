"""The database restarted under a running daemon: the daemon keeps its process, reconnects, and the
interrupted run finishes through retries with exact rows."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from batcher import embedded, store
from tests.e2e.procs import Proc, batcher_env, write_config
from tests.polling import wait_for


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A data dir outside pytest's tmp tree: pytest makes that 0700 each session, and the embedded server
    runs as the unprivileged ``pgserver`` user when the tests run as root."""
    data = Path(tempfile.mkdtemp(prefix="batcher-dbrestart-"))
    yield data
    embedded.stop_all(data)
    shutil.rmtree(data, ignore_errors=True)


async def _poll(url: str, sql: str, timeout: float = 60.0) -> Any:
    """Poll a query on a fresh connection each time (the server may be down in between)."""
    async def value() -> Any:
        try:
            conn = await store.connect(url, timeout=2)
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()
        except (*store.DB_ERRORS, asyncpg.PostgresError):
            return None

    return await wait_for(value, timeout, 0.1, what=sql)


async def test_daemon_survives_a_database_restart(redis_url: str, tmp_path: Path, pg_dir: Path) -> None:
    """A test-owned embedded PostgreSQL is stopped mid-run and started again: the same daemon process
    reconnects, the interrupted run ends (failed or abandoned) and its retry completes the chain with
    exactly 3,000 rows; the daemon still exits 0 on SIGTERM."""
    job = {"type": "synthetic", "interval_minutes": 1440, "retry_base_seconds": 0.5,
           "params": {"records": 3000, "batch_size": 50, "delay_ms": 30}}
    async with embedded.services(None, redis_url, pg_dir, start=True) as urls:
        url = urls.database_url
        env = batcher_env(url, redis_url, write_config(tmp_path / "b.toml", {"slow": job}), tmp_path,
                          BATCHER_LEASE_SECONDS="4")
        daemon = Proc(["run"], env, tmp_path / "d.log")
        try:
            daemon.wait_event("daemon_ready")
            await _poll(url, "UPDATE batch_config SET next_run_at = now() RETURNING true")
            await _poll(url, "SELECT records >= 500 FROM batch_runs WHERE status = 'running'")
            await asyncio.to_thread(embedded.stop_all, pg_dir)
            async with embedded.services(None, redis_url, pg_dir, start=True):
                await _poll(url, "SELECT count(*) FROM batch_runs WHERE status = 'succeeded'")
                assert daemon.popen.poll() is None, "the daemon kept its process"
                rows = await _poll(url, "SELECT count(DISTINCT seq) FROM synthetic_records")
                chain = await _poll(url, "SELECT array_agg(status || '/' || coalesce(reason, '') ORDER BY id) "
                                         "FROM batch_runs WHERE status <> 'skipped'")
                assert rows == 3000, chain
                assert chain[-1] == "succeeded/" and len(chain) >= 2, chain
                assert daemon.terminate_and_wait(20) == 0, daemon.tail()
        finally:
            daemon.close()
