"""The agent handler under a real daemon: preference groups as derived jobs that follow preference
changes without a restart, and priority with aging at claim time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batcher.commands import trigger_run
from batcher.fakes.agent import AgentOptions, FakeAgent
from batcher.registry import load_registry
from tests.e2e.procs import Proc, batcher_env, poll, write_config
from tests.handlers.agent_fixtures import KEY, prefer, seed

PARENT = "prefs"
DAILY, WEEKLY = f"{PARENT}@daily-0900-UTC", f"{PARENT}@weekly-0900-UTC"
HOURLY = f"{PARENT}@hourly-0930-Europe-Berlin"


def agent_job(url: str, **changes: Any) -> dict[str, Any]:
    params = {"base_url": url, "api_key_env": "AGENT_E2E_KEY", "retry_base_seconds": 0.0, **changes.pop("params", {})}
    return {"type": "agent_batch", "enabled": False, **changes, "params": params}


def daemon(database_url: str, redis_url: str, tmp_path: Path, jobs: dict[str, Any], **env: str) -> Proc:
    config = write_config(tmp_path / "b.toml", jobs)
    proc = Proc(["run"], batcher_env(database_url, redis_url, config, tmp_path, AGENT_E2E_KEY=KEY, **env),
                tmp_path / "daemon.log")
    proc.wait_event("daemon_ready")
    return proc


async def job_state(db: Any, name: str) -> Any:
    return await db.fetchrow("SELECT enabled, orphaned, source, derived_from, next_run_at, every_weeks "
                             "FROM batch_config WHERE job_name = $1", name)


async def run_now(db: Any, name: str) -> int:
    """Make a derived job due and wait for its run to succeed; returns the run id."""
    await db.execute("UPDATE batch_config SET next_run_at = now() WHERE job_name = $1", name)
    await db.execute("NOTIFY batcher_wakeup")
    return int(await poll(db, "SELECT id FROM batch_runs WHERE job_name = $1 AND status = 'succeeded'", name,
                          timeout=60))


async def users_of(db: Any, run_id: int) -> set[str]:
    return {r["user_id"] for r in await db.fetch("SELECT user_id FROM batch_results WHERE run_id = $1", run_id)}


async def test_preference_change_moves_a_user_to_another_groups_schedule_without_restart(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """One preference parent job: the daemon derives one job per group (u1 weekly; u2 and u3 — no row,
    the defaults — daily). u1 switching to daily empties the weekly group: its job is disabled and marked
    orphaned, and the daily job's next run processes u1 too. u1 switching to hourly 09:30 Berlin creates
    that group's job, which processes u1 alone — all in the same daemon process, each change within
    seconds although the daemon ticks only every 30 s (the tables' triggers NOTIFY it)."""
    await seed(db)
    await prefer(db, "u1", "t1", "weekly", "09:00")
    await prefer(db, "u2", "t1", "daily", "09:00")
    async with FakeAgent(AgentOptions(api_key=KEY)) as fake:
        proc = daemon(database_url, redis_url, tmp_path, {PARENT: agent_job(fake.url, params={
            "batch_type": "PREFERENCE_INDIVIDUAL_USERS", "feature_type": "digest"}, enabled=True)},
            BATCHER_TICK_SECONDS="30")  # changes must arrive through NOTIFY, not the next tick
        procs.append(proc)
        await poll(db, "SELECT count(*) = 2 FROM batch_config WHERE derived_from = $1 AND enabled", PARENT)
        assert await db.fetchval("SELECT next_run_at IS NULL FROM batch_config WHERE job_name = $1", PARENT)
        weekly = await job_state(db, WEEKLY)
        assert weekly["source"] == "derived" and weekly["next_run_at"].weekday() == 0
        assert (weekly["next_run_at"].hour, weekly["next_run_at"].minute) == (9, 0)

        await prefer(db, "u1", "t1", "daily", "09:00")
        await poll(db, "SELECT orphaned AND NOT enabled FROM batch_config WHERE job_name = $1", WEEKLY, timeout=5)
        assert await users_of(db, await run_now(db, DAILY)) == {"u1", "u2", "u3"}

        await prefer(db, "u1", "t1", "hourly", "09:30", tz="Europe/Berlin")
        await poll(db, "SELECT enabled FROM batch_config WHERE job_name = $1", HOURLY, timeout=5)
        hourly = await job_state(db, HOURLY)
        assert hourly["next_run_at"].minute == 30
        assert await users_of(db, await run_now(db, HOURLY)) == {"u1"}
        assert proc.popen.poll() is None
        assert await db.fetchval("SELECT count(*) FROM batch_runs WHERE job_name = $1", PARENT) == 0
        assert sum(e.get("event") == "daemon_ready" for e in proc.events()) == 1


async def test_critical_run_claimed_first_and_a_long_waiting_low_run_promoted(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc]) -> None:
    """One slot, two agent jobs (priority 0 and 100) paused while their runs queue: released together, the
    critical run is claimed first although the low one was queued first; then a low run that has waited
    three hours (aging 1 point/minute: 180 > 100) is claimed before a fresh critical run."""
    await seed(db, users=[(f"u{i}", "t1", True) for i in range(4)])
    async with FakeAgent(AgentOptions(api_key=KEY, latency_ms=100)) as fake:
        jobs = {"low": agent_job(fake.url, priority=0, paused=True, params={"concurrency": 1}),
                "critical": agent_job(fake.url, priority=100, paused=True, params={"concurrency": 1})}
        procs.append(daemon(database_url, redis_url, tmp_path, jobs, BATCHER_CONCURRENCY="1"))
        registry = load_registry()

        async def release_and_order(low: int, critical: int) -> list[int]:
            await db.execute("UPDATE batch_config SET paused = false WHERE job_name IN ('low', 'critical')")
            await db.execute("NOTIFY batcher_wakeup")
            await poll(db, "SELECT count(*) = 2 FROM batch_runs WHERE id = ANY($1) AND status = 'succeeded'",
                       [low, critical], timeout=60)
            rows = await db.fetch("SELECT id FROM batch_runs WHERE id = ANY($1) ORDER BY started_at", [low, critical])
            await db.execute("UPDATE batch_config SET paused = true WHERE job_name IN ('low', 'critical')")
            return [r["id"] for r in rows]

        low, _ = await trigger_run(db, registry, "low", {})
        critical, _ = await trigger_run(db, registry, "critical", {})
        assert await release_and_order(low, critical) == [critical, low]

        low, _ = await trigger_run(db, registry, "low", {"template": "old"})
        await db.execute("UPDATE batch_runs SET queued_at = now() - interval '3 hours' WHERE id = $1", low)
        critical, _ = await trigger_run(db, registry, "critical", {"template": "new"})
        assert await release_and_order(low, critical) == [low, critical]
