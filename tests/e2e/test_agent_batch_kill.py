"""``batcher run-job agent_batch`` from the shell against the fake processing service in its own process,
and a ``kill -9`` mid-run whose rerun resumes without re-sending what already succeeded."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.procs import Proc, batcher_env, poll, write_config
from tests.handlers.agent_fixtures import KEY, seed
from tests.serving import fake_process

USERS = [(f"user{i:04d}", f"t{i % 3}", True) for i in range(300)]


@pytest.fixture
def fake_url() -> Iterator[str]:
    """The fake as a subprocess (the test blocks on batcher processes, so it cannot serve in-process)."""
    with fake_process("agent", {"api_key": KEY, "latency_ms": 40}) as url:
        yield url


def ok_counts(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url + "/_control/counts", timeout=10) as answer:
        return dict(json.loads(answer.read())["ok_counts"])


def run_job(url: str, env: dict[str, str], log: Path) -> Proc:
    args = ["run-job", "agent_batch", "--param", f"base_url={url}", "--param", f"api_key={KEY}",
            "--param", "batch_type=INDIVIDUAL_USERS", "--param", "chunk_size=20", "--param", "concurrency=4"]
    return Proc(args, env, log)


async def test_killed_agent_run_resumes_without_resending_succeeded_items(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc], fake_url: str) -> None:
    """SIGKILL after some chunks committed; the rerun takes the chain over, skips every item committed as
    succeeded (the fake answered each of those exactly once over both runs) and ends with one succeeded
    row per user and a context counting all 300; the summary is the last stdout line and names no key."""
    await seed(db, users=USERS, items=[])
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {}), tmp_path)
    victim = run_job(fake_url, env, tmp_path / "killed.log")
    procs.append(victim)
    await poll(db, "SELECT count(*) >= 60 FROM batch_results", timeout=60)
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    before = {r["item_key"] for r in await db.fetch("SELECT item_key FROM batch_results WHERE status = 'succeeded'")}
    assert 60 <= len(before) < len(USERS)
    rerun = run_job(fake_url, env, tmp_path / "rerun.log")
    procs.append(rerun)
    assert rerun.wait(120) == 0, rerun.tail()
    summary = rerun.stdout_last_json()
    assert summary["status"] == "succeeded" and KEY not in json.dumps(summary)
    runs = [dict(r) for r in await db.fetch("SELECT id, status, reason, root_run_id FROM batch_runs ORDER BY id")]
    assert [(r["status"], r["reason"]) for r in runs] == [("failed", "abandoned"), ("succeeded", None)]
    rows = await db.fetch("SELECT run_id, item_key, status FROM batch_results")
    assert {(r["run_id"], r["status"]) for r in rows} == {(runs[0]["id"], "succeeded")}
    assert sorted(r["item_key"] for r in rows) == sorted(f"user:{u}" for u, _, _ in USERS)
    counts = ok_counts(fake_url)
    assert set(counts) == {f"user:{u}" for u, _, _ in USERS}
    assert all(counts[key] == 1 for key in before), "an item that had succeeded was sent again"
    context = await db.fetchval("SELECT context FROM batch_contexts WHERE run_id = $1", runs[0]["id"])
    assert context["progress"] == {"processed": 300, "succeeded": 300, "failed": 0, "total": 300,
                                   "percentage": 100.0}
    for log in (victim.log_path, rerun.log_path):
        assert KEY not in log.read_text()


async def test_daemon_shutdown_mid_run_and_the_retry_skips_succeeded_items(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc], fake_url: str) -> None:
    """SIGTERM to a daemon mid-run: it exits 0, the run ends cancelled/shutdown with a queued retry; a new
    daemon runs the retry, which sends only what had not succeeded: every item committed before the
    shutdown was answered exactly once, and every user ends with one succeeded row under the root run."""
    from batcher.commands import trigger_run
    from batcher.registry import load_registry

    await seed(db, users=USERS, items=[])
    job = {"type": "agent_batch", "enabled": False,
           "params": {"base_url": fake_url, "api_key_env": "AGENT_E2E_KEY", "chunk_size": 20, "concurrency": 4}}
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {"agents": job}), tmp_path,
                      AGENT_E2E_KEY=KEY)
    first = Proc(["run"], env, tmp_path / "d1.log")
    procs.append(first)
    first.wait_event("daemon_ready")
    root, _ = await trigger_run(db, load_registry(), "agents", {})
    await poll(db, "SELECT count(*) >= 60 FROM batch_results", timeout=60)
    assert first.terminate_and_wait(30) == 0, first.tail()
    before = {r["item_key"] for r in await db.fetch("SELECT item_key FROM batch_results WHERE status = 'succeeded'")}
    assert 60 <= len(before) < len(USERS)
    stopped = await db.fetchrow("SELECT status, reason FROM batch_runs WHERE id = $1", root)
    assert tuple(stopped) == ("cancelled", "shutdown")
    second = Proc(["run"], env, tmp_path / "d2.log")
    procs.append(second)
    await poll(db, "SELECT status = 'succeeded' FROM batch_runs WHERE root_run_id = $1 AND id <> $1", root,
               timeout=90)
    rows = await db.fetch("SELECT run_id, status FROM batch_results")
    assert len(rows) == len(USERS) and {(r["run_id"], r["status"]) for r in rows} == {(root, "succeeded")}
    counts = ok_counts(fake_url)
    assert all(counts[key] == 1 for key in before), "an item that had succeeded was sent again"
