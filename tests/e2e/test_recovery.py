"""Process-level guarantees of the scheduler core: kill -9 recovery, run-job takeover, SIGTERM drain.

Each test runs real ``python -m batcher`` processes against the session's PostgreSQL database and Redis db.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.e2e.procs import Proc, batcher_env, poll, write_config

SLOW_JOB = {"type": "synthetic", "interval_minutes": 1440,
            "params": {"records": 2000, "batch_size": 50, "delay_ms": 25}}


def _daemon(procs: list[Proc], env: dict[str, str], tmp_path: Path, name: str) -> Proc:
    proc = Proc(["run"], env, tmp_path / f"{name}.log")
    procs.append(proc)
    proc.wait_event("daemon_ready")
    return proc


async def _chain_rows(pool: Any, job: str) -> tuple[list[dict[str, Any]], int]:
    runs = [dict(r) for r in await pool.fetch(
        "SELECT * FROM batch_runs WHERE job_name = $1 AND status <> 'skipped' ORDER BY id", job)]
    root = runs[0]["root_run_id"] or runs[0]["id"]
    rows = await pool.fetchval("SELECT count(DISTINCT seq) FROM synthetic_records WHERE scope_key = $1", str(root))
    return runs, rows


async def test_kill9_daemon_is_recovered_by_another_through_the_freed_lock(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """kill -9 of the daemon running a job: the other daemon sees the freed liveness lock (well before the
    6 s lease expires), records the run abandoned, and its retry resumes from the run-scoped checkpoint;
    synthetic_records holds exactly the 2,000 expected rows and the chain's record counters add up."""
    # paused until both daemons are ready: otherwise the first one can finish the run before the second starts
    env = batcher_env(database_url, redis_url,
                      write_config(tmp_path / "b.toml", {"slow": {**SLOW_JOB, "paused": True}}), tmp_path)
    daemons = [_daemon(procs, env, tmp_path, f"d{i}") for i in range(2)]
    await db.execute("UPDATE batch_config SET paused = false, next_run_at = now()")
    await db.execute("SELECT pg_notify('batcher_wakeup', '')")
    await poll(db, "SELECT records >= 300 FROM batch_runs WHERE status = 'running'")
    worker = await db.fetchval("SELECT worker_id FROM batch_runs WHERE status = 'running'")
    victim = next(d for d in daemons if f":{d.pid}:" in worker)
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await poll(db, "SELECT count(*) FROM batch_runs WHERE trigger = 'retry' AND status = 'running' "
                   "OR status = 'succeeded'", timeout=30)
    recovered_in = time.monotonic() - killed_at
    await poll(db, "SELECT count(*) FROM batch_runs WHERE status = 'succeeded'", timeout=60)
    runs, rows = await _chain_rows(db, "slow")
    assert recovered_in < 5.5, f"recovery took {recovered_in:.1f} s (lease is 6 s)"
    assert [(r["status"], r["reason"]) for r in runs] == [("failed", "abandoned"), ("succeeded", None)]
    assert runs[1]["retry_of"] == runs[0]["id"] and runs[1]["root_run_id"] == runs[0]["id"]
    assert runs[1]["abandons"] == 1 and runs[1]["attempt"] == 1
    assert rows == 2000
    assert runs[1]["records"] < 2000, "the retry resumed from the checkpoint instead of starting over"


async def test_run_job_killed_and_rerun_is_recovered_at_once(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """run-job killed with SIGKILL, then run again: the rerun marks the dead run abandoned and claims its
    own retry in one transaction, resumes the chain, exits 0 with exact rows and leaves nothing queued."""
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {}), tmp_path)
    args = ["run-job", "synthetic", "--job-name", "rj", "--param", "records=2000", "--param", "batch_size=50",
            "--param", "delay_ms=25"]
    first = Proc(args, env, tmp_path / "rj1.log")
    procs.append(first)
    await poll(db, "SELECT records >= 300 FROM batch_runs WHERE job_name = 'rj' AND status = 'running'")
    first.signal(signal.SIGKILL)
    first.wait(10)
    second = Proc(args, env, tmp_path / "rj2.log")
    procs.append(second)
    assert second.wait(60) == 0, second.log_path.read_text()[-2000:]
    summary = second.stdout_last_json()
    runs, rows = await _chain_rows(db, "rj")
    assert summary["status"] == "succeeded" and summary["run_id"] == runs[-1]["id"]
    assert [(r["status"], r["reason"]) for r in runs] == [("failed", "abandoned"), ("succeeded", None)]
    assert rows == 2000 and runs[0]["records"] + runs[1]["records"] == 2000
    assert await db.fetchval("SELECT count(*) FROM batch_runs WHERE status IN ('queued', 'running')") == 0


async def test_sigterm_drains_cancels_and_restart_resumes_without_duplicates(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """SIGTERM during a long run (grace 1 s): exit 0 well within grace + 10 s; the run ends
    cancelled/shutdown with a queued retry; a restarted daemon resumes from the checkpoint: exactly 2,000
    rows and the two runs' record counters add up to 2,000 (no duplicate, no gap)."""
    job = {**SLOW_JOB, "params": {**SLOW_JOB["params"], "delay_ms": 80}}
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {"slow": job}), tmp_path)
    daemon = _daemon(procs, env, tmp_path, "d1")
    await db.execute("UPDATE batch_config SET next_run_at = now()")
    await poll(db, "SELECT records >= 300 FROM batch_runs WHERE status = 'running'")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(11) == 0
    assert time.monotonic() - started < 11
    first = dict(await db.fetchrow("SELECT * FROM batch_runs WHERE status <> 'skipped' ORDER BY id LIMIT 1"))
    assert (first["status"], first["reason"]) == ("cancelled", "shutdown")
    assert await db.fetchval("SELECT count(*) FROM batch_runs WHERE status = 'queued' AND retry_of = $1",
                             first["id"]) == 1
    _daemon(procs, env, tmp_path, "d2")
    await poll(db, "SELECT count(*) FROM batch_runs WHERE status = 'succeeded'", timeout=60)
    runs, rows = await _chain_rows(db, "slow")
    assert rows == 2000 and sum(r["records"] for r in runs) == 2000


async def test_sigterm_stops_a_handler_blocked_in_a_long_await(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """A handler sleeping 10 minutes inside one batch is still stopped: SIGTERM → grace 1 s → cancel
    signal → 5 s later the task is cancelled; the final commit still records cancelled/shutdown."""
    job = {"type": "synthetic", "interval_minutes": 1440, "params": {"records": 10, "delay_ms": 600_000}}
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {"blocked": job}), tmp_path)
    daemon = _daemon(procs, env, tmp_path, "d1")
    await db.execute("UPDATE batch_config SET next_run_at = now()")
    await poll(db, "SELECT count(*) FROM batch_runs WHERE status = 'running'")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert time.monotonic() - started < 11
    row = await db.fetchrow("SELECT status, reason FROM batch_runs WHERE trigger = 'schedule' AND status <> 'skipped'")
    assert (row["status"], row["reason"]) == ("cancelled", "shutdown")


async def test_run_job_sigterm_cancels_without_retry(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """run-job on SIGTERM: the run ends cancelled/shutdown, its checkpoint is kept, no retry is queued,
    and the command exits 1 with the JSON summary as its last stdout line."""
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {}), tmp_path)
    proc = Proc(["run-job", "synthetic", "--param", "records=2000", "--param", "batch_size=50",
                 "--param", "delay_ms=25"], env, tmp_path / "rj.log")
    procs.append(proc)
    await poll(db, "SELECT records >= 200 FROM batch_runs WHERE status = 'running'")
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 1
    summary = proc.stdout_last_json()
    assert (summary["status"], summary["reason"]) == ("cancelled", "shutdown")
    assert await db.fetchval("SELECT count(*) FROM batch_runs WHERE status = 'queued'") == 0
    assert await db.fetchval("SELECT count(*) FROM checkpoints") == 1
