"""``batcher aggregate`` killed with SIGKILL mid-run: the rerun takes the chain over and converges exactly.

Real ``python -m batcher aggregate`` processes against the session's PostgreSQL database and Redis db.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import redis

from tests.e2e.procs import Proc, batcher_env, poll, write_config

KEYS = 10_000
JOB = {"type": "usage_aggregation", "interval_minutes": 60,
       "params": {"batch_size": 100, "chunk_size": 50, "scan_count": 100}}


def _seed(client: redis.Redis, bump: int = 0) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    expected = {}
    for n in range(KEYS):
        pipe.set(f"usage:m{n:05d}:2025-11-01:queries", n + bump)
        expected[f"m{n:05d}"] = n + bump
    pipe.execute()
    return expected


async def _values(db: Any) -> dict[str, int]:
    return {r[0]: r[1] for r in await db.fetch("SELECT merchant_id, value FROM merchant_usage")}


async def test_killed_aggregate_is_resumed_and_converges(db: Any, redis_db: redis.Redis, database_url: str,
                                                         redis_url: str, tmp_path: Path,
                                                         procs: list[Proc]) -> None:
    """SIGKILL after at least one committed batch leaves part of the rows and a run-scoped cursor; the next
    ``aggregate`` with the same date is the killed run's retry (same root), resumes from the cursor rather
    than from the start, and the table then equals Redis exactly; a later run picks up new counts."""
    await db.execute("TRUNCATE merchant_usage")
    expected = _seed(redis_db)
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {"usage": JOB}), tmp_path)
    _sync(env, tmp_path, procs)
    victim = Proc(["aggregate", "--date", "2025-11-01"], env, tmp_path / "killed.log")
    procs.append(victim)
    await poll(db, "SELECT count(*) FROM checkpoints WHERE job_name = 'usage'")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    partial = await db.fetchval("SELECT count(*) FROM merchant_usage")
    assert 0 < partial < KEYS
    rerun = Proc(["aggregate", "--date", "2025-11-01"], env, tmp_path / "rerun.log")
    procs.append(rerun)
    assert rerun.wait(60) == 0, rerun.log_path.read_text()[-3000:]
    summary = rerun.stdout_last_json()
    runs = [dict(r) for r in await db.fetch("SELECT * FROM batch_runs ORDER BY id")]
    assert [r["status"] for r in runs] == ["failed", "succeeded"] and runs[0]["reason"] == "abandoned"
    assert runs[1]["retry_of"] == runs[0]["id"] and runs[1]["root_run_id"] == runs[0]["id"]
    assert summary["run_id"] == runs[1]["id"] and 0 < runs[1]["items_checked"] < KEYS
    assert await _values(db) == expected
    assert await db.fetchval("SELECT count(*) FROM checkpoints") == 0
    newer = _seed(redis_db, bump=1)
    bigger = {"usage": {**JOB, "params": {"batch_size": 5000}}}  # a changed entry: the file wins
    env["BATCHER_CONFIG"] = str(write_config(tmp_path / "b2.toml", bigger))
    _sync(env, tmp_path, procs)
    again = Proc(["aggregate", "--date", "2025-11-01"], env, tmp_path / "again.log")
    procs.append(again)
    assert again.wait(60) == 0
    assert await _values(db) == newer


def _sync(env: dict[str, str], tmp_path: Path, procs: list[Proc]) -> None:
    """`batcher jobs sync` (as the daemon does at start): aggregate reads the job, never syncs the file."""
    sync = Proc(["jobs", "sync"], env, tmp_path / "sync.log")
    procs.append(sync)
    assert sync.wait(60) == 0, sync.tail()
