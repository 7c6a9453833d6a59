"""Pipeline guarantees end to end: kill -9 at random points loses and duplicates nothing; checkpoint
reset; run-scoped checkpoints die with their chain's success."""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import pytest

from batcher.cli import main
from batcher.testing import run_job_once, test_settings
from tests.e2e.procs import Proc, batcher_env, poll, write_config


async def test_kill9_at_random_points_of_a_200k_run_leaves_exact_rows(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """A 200,000-record synthetic run-job is killed with SIGKILL five times at random points after it
    started committing, and rerun each time; the final rerun finishes the chain: synthetic_records holds
    each of the 200,000 keys exactly once and every run of the chain shares its root."""
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {}), tmp_path)
    args = ["run-job", "synthetic", "--job-name", "big", "--param", "records=200000", "--param", "batch_size=2000"]
    rng = random.Random(20261123)
    for kill in range(5):
        proc = Proc(args, env, tmp_path / f"k{kill}.log")
        procs.append(proc)
        committed = await db.fetchval("SELECT count(*) FROM synthetic_records")
        threshold = committed + rng.randint(2000, 30000)
        await poll(db, "SELECT count(*) >= $1 FROM synthetic_records", threshold, timeout=60)
        proc.signal(signal.SIGKILL)
        proc.wait(10)
    final = Proc(args, env, tmp_path / "final.log")
    procs.append(final)
    assert final.wait(120) == 0, final.log_path.read_text()[-2000:]
    summary = final.stdout_last_json()
    runs = [dict(r) for r in await db.fetch("SELECT * FROM batch_runs WHERE job_name = 'big' ORDER BY id")]
    roots = {r["root_run_id"] for r in runs}
    assert len(roots) == 1 and summary["status"] == "succeeded"
    assert [r["reason"] for r in runs[:-1]] == ["abandoned"] * (len(runs) - 1)
    assert await db.fetchval("SELECT count(*) FROM synthetic_records") == 200_000
    assert await db.fetchval("SELECT count(DISTINCT seq) FROM synthetic_records WHERE scope_key = $1",
                             str(roots.pop())) == 200_000
    assert await db.fetchval("SELECT count(*) FROM batch_runs WHERE status IN ('queued', 'running')") == 0


async def test_second_run_rewrites_under_its_own_root_after_success(db: Any, database_url: str,
                                                                   redis_url: str) -> None:
    """Run-scoped checkpoints are ignored (deleted) once their chain succeeded: a second synthetic run
    writes all its rows again under its own root id."""
    s = test_settings(database_url, redis_url)
    first = await run_job_once(s, "synthetic", {"records": 300, "batch_size": 100})
    second = await run_job_once(s, "synthetic", {"records": 300, "batch_size": 100})
    assert first["records"] == second["records"] == 300
    counts = dict(await db.fetch("SELECT scope_key, count(*) FROM synthetic_records GROUP BY scope_key"))
    assert counts == {str(first["run_id"]): 300, str(second["run_id"]): 300}
    assert await db.fetchval("SELECT count(*) FROM checkpoints") == 0


def test_checkpoints_reset_makes_the_next_run_read_from_the_start(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A job-scoped cursor continues across runs (second run writes keys 100–199); `checkpoints reset`
    without --yes is refused (exit 2); with --yes the next run re-reads from key 0."""
    config = write_config(tmp_path / "b.toml", {"inc": {
        "type": "synthetic", "interval_minutes": 1440, "params": {"records": 100, "batch_size": 50, "scope": "job"}}})
    for key, value in {"BATCHER_DATABASE_URL": database_url, "BATCHER_REDIS_URL": redis_url,
                       "BATCHER_CONFIG": str(config), "BATCHER_DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    assert main(["jobs", "sync"]) == 0
    assert main(["run-job", "inc"]) == 0
    assert main(["run-job", "inc"]) == 0
    capsys.readouterr()
    assert main(["checkpoints", "show", "inc"]) == 0
    assert '"next_seq": 200' in capsys.readouterr().out
    assert main(["checkpoints", "reset", "inc"]) == 2
    assert main(["checkpoints", "reset", "inc", "--yes"]) == 0
    assert main(["run-job", "inc"]) == 0
    capsys.readouterr()
    main(["runs", "--job", "inc", "--limit", "1"])
    assert main(["checkpoints", "show", "inc"]) == 0
    out = capsys.readouterr().out
    assert '"next_seq": 100' in out, out
