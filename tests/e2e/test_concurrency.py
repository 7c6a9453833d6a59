"""Three daemons on one database: every occurrence runs once or is recorded skipped, and no job ever has
two runs whose [started_at, finished_at) overlap — while schedules keep firing and manual triggers arrive."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from batcher.commands import trigger_run
from batcher.registry import load_registry
from tests.e2e.chaos import assert_no_overlap
from tests.e2e.procs import Proc, batcher_env, poll, write_config

JOBS = 20
DRIVE_SECONDS = 30.0


async def test_three_daemons_never_overlap_a_job_and_account_for_every_occurrence(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """20 synthetic jobs made due again and again for ~30 s of wall time across 3 daemon processes
    (concurrency 4 each) while manual triggers arrive: per job, no two runs overlap in time; every
    scheduled occurrence either succeeded or is skipped with a reason; nothing failed; every manual
    trigger ran."""
    jobs = {f"job{i:02d}": {"type": "synthetic", "interval_minutes": 1440, "retry_base_seconds": 1,
                            "params": {"records": 200, "batch_size": 50, "delay_ms": random.choice([5, 20, 40])}}
            for i in range(JOBS)}
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", jobs), tmp_path,
                      BATCHER_CONCURRENCY="4")
    for i in range(3):
        procs.append(Proc(["run"], env, tmp_path / f"d{i}.log"))
    for p in procs:
        p.wait_event("daemon_ready")
    registry = load_registry()
    triggered: list[int] = []
    deadline = time.monotonic() + DRIVE_SECONDS
    while time.monotonic() < deadline:
        names = random.sample(sorted(jobs), 8)
        await db.execute("UPDATE batch_config SET next_run_at = now() WHERE job_name = ANY($1)", names)
        if random.random() < 0.3:
            run_id, _ = await trigger_run(db, registry, random.choice(sorted(jobs)), {"value_seed": len(triggered)})
            triggered.append(run_id)
        await asyncio.sleep(0.3)  # the pace of the load this test drives for DRIVE_SECONDS (no wait for anything)
    await poll(db, "SELECT count(*) = 0 FROM batch_runs WHERE status IN ('queued', 'running')", timeout=90)
    runs = [dict(r) for r in await db.fetch("SELECT * FROM batch_runs ORDER BY id")]
    assert_no_overlap(runs)
    bad = [r for r in runs if r["status"] not in ("succeeded", "skipped") or
           (r["status"] == "skipped" and not r["reason"])]
    assert not bad, bad[:3]
    done = {r["id"] for r in runs if r["status"] == "succeeded"}
    assert set(triggered) <= done
    scheduled = [r for r in runs if r["trigger"] == "schedule"]
    assert len({(r["job_name"], r["scheduled_for"]) for r in scheduled}) == len(scheduled)
    assert sum(r["status"] == "succeeded" for r in scheduled) >= JOBS
    workers = {r["worker_id"].split(":")[1] for r in runs if r["worker_id"]}
    assert len(workers) == 3, "all three daemons took part"
