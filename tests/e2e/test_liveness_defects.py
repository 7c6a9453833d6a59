"""Issue 14, defect 1 at process level: a failed heartbeat query on a pooled connection must not drop the
worker's liveness lock (another daemon's reaper would abandon every run of the worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.procs import Proc, batcher_env, poll, write_config

SLOW_JOB = {"type": "synthetic", "interval_minutes": 1440,
            "params": {"records": 1000, "batch_size": 50, "delay_ms": 300}}
LIVENESS_HOLDER = ("SELECT l.pid FROM pg_locks l JOIN workers w ON l.objid = w.lock_key::oid "
                   "WHERE w.worker_id = $1 AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 2")
BLOCKED_HEARTBEAT = ("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                     "AND query LIKE 'UPDATE workers SET heartbeat_at%' AND pid <> pg_backend_pid()")


def _daemon(procs: list[Proc], env: dict[str, str], tmp_path: Path, name: str) -> Proc:
    proc = Proc(["run"], env, tmp_path / f"{name}.log")
    procs.append(proc)
    proc.wait_event("daemon_ready")
    return proc


async def test_failed_heartbeat_query_keeps_the_liveness_lock(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """Defect 1: the daemon running a job has its heartbeat's pooled query fail (the ``workers`` row is
    locked by the test so the query waits, then its backend is terminated). The daemon logs
    heartbeat_failed but keeps its liveness connection and advisory lock (same backend), so the other
    daemon's reaper never abandons the run, which succeeds in one attempt."""
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {"slow": SLOW_JOB}), tmp_path)
    daemons = [_daemon(procs, env, tmp_path, f"d{i}") for i in range(2)]
    await db.execute("UPDATE batch_config SET next_run_at = now()")
    await poll(db, "SELECT records >= 50 FROM batch_runs WHERE status = 'running'")
    worker = await db.fetchval("SELECT worker_id FROM batch_runs WHERE status = 'running'")
    victim = next(d for d in daemons if f":{d.pid}:" in worker)
    holder = await db.fetchval(LIVENESS_HOLDER, worker)
    async with db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1 FROM workers WHERE worker_id = $1 FOR UPDATE", worker)
        blocked = await poll(db, BLOCKED_HEARTBEAT)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", blocked)
        await tx.rollback()
    victim.wait_event("heartbeat_failed")
    await poll(db, "SELECT count(*) FROM batch_runs WHERE status <> 'running' AND status <> 'queued' "
                   "AND status <> 'skipped'", timeout=60)
    runs = [dict(r) for r in await db.fetch("SELECT * FROM batch_runs WHERE status <> 'skipped' ORDER BY id")]
    assert [(r["status"], r["reason"]) for r in runs] == [("succeeded", None)], runs
    assert await db.fetchval(LIVENESS_HOLDER, worker) == holder, "the liveness lock was released or moved"
    assert not [e for e in victim.events() if e.get("event") == "worker_reconnected"]
