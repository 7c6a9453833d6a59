"""Scheduling policies against real PostgreSQL (DESIGN §5, issue 6): one test per policy.

Retries with backoff, abandons, timeouts, cancel, pause, overlap, misfire grace, manual triggers, priority
aging and queues. Runs execute in-process (a real :class:`Worker` and :class:`Scheduler` on the test
database); schedules are driven by setting ``next_run_at`` / ``not_before`` / ``queued_at`` in the
database, never by waiting for minutes, and every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

from batcher.commands import cancel_run, set_paused, trigger_run
from batcher.materialize import materialize_due
from batcher.models import Services
from batcher.recovery import reap_abandoned
from batcher.runner import retry_delay
from batcher.store import Q
from batcher.testing import test_services, test_settings
from tests.inprocess import daemon
from tests.polling import wait_for

SYNTH = "synthetic"


async def poll(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll a predicate (sync or async) until it returns a truthy value; fail naming ``what`` after
    ``timeout`` s."""
    return await wait_for(predicate, timeout, what=what)


@contextlib.asynccontextmanager
async def services_for(database_url: str, redis_url: str, jobs: dict[str, Any],
                       **daemon: Any) -> AsyncIterator[Services]:
    """Services with these jobs synced from the 'file', a fast tick, and daemon overrides."""
    settings = test_settings(database_url, redis_url, jobs=jobs)
    settings = settings.model_copy(update={"daemon": settings.daemon.model_copy(
        update={"tick_seconds": 0.1, **daemon})})
    async with test_services(settings, http=False) as svc:
        yield svc


async def runs_of(pool: Any, job: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch("SELECT * FROM batch_runs WHERE job_name = $1 ORDER BY id", job)]


def job(**overrides: Any) -> dict[str, Any]:
    """A synthetic job entry (disabled unless overridden: tests say when it runs)."""
    params = overrides.pop("params", {})
    return {"type": SYNTH, "interval_minutes": 1440, "enabled": False,
            "params": {"records": 100, "batch_size": 10, **params}, **overrides}


# ----------------------------------------------------------------------------------------------- retries

def test_retry_delay_is_full_jitter_exponential_backoff() -> None:
    """retry_delay(base, attempt) is uniform in [0, base × 2^(attempt-1)] (full jitter: it spreads over the
    whole range, low and high), and is capped at one day however many attempts."""
    for attempt in range(1, 6):
        bound = 0.05 * 2 ** (attempt - 1)
        samples = [retry_delay(0.05, attempt) for _ in range(2000)]
        assert all(0 <= s <= bound for s in samples), (attempt, min(samples), max(samples), bound)
        assert min(samples) < 0.1 * bound and max(samples) > 0.9 * bound, (attempt, min(samples), max(samples))
    assert all(0 <= retry_delay(60, 40) <= 86_400 for _ in range(200))
    assert max(retry_delay(60, 40) for _ in range(200)) > 3600


async def test_transient_failures_retry_with_backoff_permanent_fail_at_once(
        db: Any, database_url: str, redis_url: str) -> None:
    """Transient failure → a NEW run row (trigger retry, retry_of, same root, attempt+1, not_before within
    [queued_at, queued_at + base × 2^(attempt-1)]) that resumes from the run-scoped checkpoint: 100 rows
    exactly, counters add up, checkpoint removed on success. Retries exhausted after max_retries → the last
    row is failed/retries_exhausted and nothing more is queued. A permanent error fails at once without
    retry. last_success_at moves only on success (it equals the succeeded run's finished_at)."""
    jobs = {
        "flaky": job(enabled=True, max_retries=3, retry_base_seconds=0.05,
                     params={"fail_at_batch": 4, "fail_attempts": 1}),
        "doomed": job(enabled=True, max_retries=2, retry_base_seconds=0.05,
                      params={"fail_at_batch": 2, "fail_attempts": 99}),
        "broken": job(enabled=True, max_retries=3, retry_base_seconds=0.05,
                      params={"fail_at_batch": 2, "fail_mode": "permanent"}),
    }
    async with services_for(database_url, redis_url, jobs) as svc, daemon(svc):
        pool = svc.pool
        await poll(lambda: pool.fetchval(
            "SELECT count(*) = 3 FROM batch_runs WHERE status IN ('succeeded', 'failed') AND (job_name = "
            "'flaky' AND status = 'succeeded' OR reason IN ('retries_exhausted', 'permanent_error'))"),
            "flaky succeeded, doomed exhausted, broken failed")
        flaky, doomed, broken = [await runs_of(pool, j) for j in ("flaky", "doomed", "broken")]
        config = {r["job_name"]: dict(r) for r in await pool.fetch("SELECT * FROM batch_config")}

    first, retry = flaky
    root = first["root_run_id"] or first["id"]
    assert (first["status"], first["reason"], first["attempt"], first["records"]) == \
        ("failed", "transient_error", 1, 30), first
    assert (retry["trigger"], retry["retry_of"], retry["root_run_id"], retry["attempt"]) == \
        ("retry", first["id"], root, 2), retry
    backoff = (retry["not_before"] - retry["queued_at"]).total_seconds()
    assert 0 <= backoff <= 0.05 + 1e-3, f"retry not_before {backoff} s after queueing, outside [0, 0.05]"
    assert (retry["status"], retry["records"]) == ("succeeded", 70), "the retry resumes at the checkpoint"
    assert await db.fetchval("SELECT count(*) FROM synthetic_records WHERE scope_key = $1", str(root)) == 100
    assert await db.fetchval("SELECT count(*) FROM checkpoints WHERE job_name = 'flaky'") == 0
    assert config["flaky"]["last_success_at"] == retry["finished_at"]

    assert [(r["attempt"], r["status"], r["reason"]) for r in doomed] == [
        (1, "failed", "transient_error"), (2, "failed", "transient_error"), (3, "failed", "retries_exhausted")]
    assert all(r["root_run_id"] == (doomed[0]["root_run_id"] or doomed[0]["id"]) for r in doomed[1:])
    for prev, nxt in itertools.pairwise(doomed):
        bound = 0.05 * 2 ** (prev["attempt"] - 1)
        gap = (nxt["not_before"] - nxt["queued_at"]).total_seconds()
        assert nxt["retry_of"] == prev["id"] and 0 <= gap <= bound + 1e-3, (gap, bound)
    assert config["doomed"]["last_success_at"] is None

    assert [(r["status"], r["reason"], r["records"]) for r in broken] == [("failed", "permanent_error", 10)]
    assert config["broken"]["last_success_at"] is None


# ---------------------------------------------------------------------------------------------- abandons

async def test_abandons_count_against_max_abandons_not_max_retries(
        db: Any, database_url: str, redis_url: str) -> None:
    """A running run whose worker's liveness lock is free is reaped: failed/abandoned plus a retry due at
    once with abandons+1 and the SAME attempt (max_retries = 0 does not stop it). After max_abandons (2)
    deaths the third abandon queues nothing."""
    async with services_for(database_url, redis_url, {"fragile": job(max_retries=0, max_abandons=2)}) as svc:
        pool = svc.pool
        await pool.execute("INSERT INTO workers (worker_id, host, pid, version, lock_key) "
                           "VALUES ('ghost', 'nowhere', 1, 'x', $1)", secrets.randbelow(2**31 - 1) + 1)
        first = await pool.fetchval("INSERT INTO batch_runs (job_name, job_type, trigger, root_trigger) "
                                    "VALUES ('fragile', 'synthetic', 'manual', 'manual') RETURNING id")
        for death in range(1, 4):
            claimed = await pool.fetch(Q["claim_runs"], "ghost", 1, 60.0, None, 1.0)
            assert len(claimed) == 1, f"death {death}: the queued (retry) run is claimable"
            assert await reap_abandoned(pool) == 1, f"death {death}: lease valid, but the lock is free"
        runs = await runs_of(pool, "fragile")
    assert [(r["status"], r["reason"], r["trigger"], r["attempt"], r["abandons"]) for r in runs] == [
        ("failed", "abandoned", "manual", 1, 0),
        ("failed", "abandoned", "retry", 1, 1),
        ("failed", "abandoned", "retry", 1, 2)], "2 abandons tolerated, the 3rd gives up"
    assert all(r["root_run_id"] == first for r in runs)
    assert runs[1]["retry_of"] == runs[0]["id"] and runs[2]["retry_of"] == runs[1]["id"]
    assert abs((runs[1]["not_before"] - runs[1]["queued_at"]).total_seconds()) < 1e-3, "no backoff"


# --------------------------------------------------------------------------------------- timeout, cancel

async def test_timeout_fails_the_run_and_keeps_committed_batches(
        db: Any, database_url: str, redis_url: str) -> None:
    """timeout_seconds = 0.8 on a run that needs 10 s: failed/timeout with no retry; the handler is
    cancelled promptly; the batches committed before the deadline stay (rows = records); the chain ended for
    good, so its run-scoped checkpoint is gone (issue 14 #14)."""
    jobs = {"slow": job(timeout_seconds=0.8, params={"records": 1000, "delay_ms": 100})}
    async with services_for(database_url, redis_url, jobs) as svc, daemon(svc):
        run_id, _ = await trigger_run(svc.pool, svc.registry, "slow", {})
        run = await poll(lambda: svc.pool.fetchrow(
            "SELECT * FROM batch_runs WHERE id = $1 AND finished_at IS NOT NULL", run_id), "slow finished")
        runs = await runs_of(svc.pool, "slow")
    assert (run["status"], run["reason"]) == ("failed", "timeout"), run
    assert len(runs) == 1, "a timeout is not retried"
    assert 800 <= run["runtime_ms"] < 3000, f"handler not cancelled promptly: {run['runtime_ms']} ms"
    assert 0 < run["records"] < 1000
    rows = await db.fetchval("SELECT count(*) FROM synthetic_records WHERE scope_key = $1", str(run_id))
    assert rows == run["records"], (rows, run["records"])
    assert await db.fetchval("SELECT count(*) FROM checkpoints WHERE job_name = 'slow'") == 0


async def test_cancel_stops_a_running_run_in_its_wait_and_a_queued_run_at_once(
        db: Any, database_url: str, redis_url: str) -> None:
    """cancel_run on a running run whose handler waits 1.5 s per batch ends it cancelled well before the
    next batch would arrive (the wait watches the signal), with its committed rows intact and no retry (the
    ended chain's run-scoped checkpoint is gone, issue 14 #14); on a queued run it cancels at once."""
    jobs = {"waits": job(params={"records": 1000, "delay_ms": 1500})}
    async with services_for(database_url, redis_url, jobs) as svc, daemon(svc):
        pool = svc.pool
        run_id, _ = await trigger_run(pool, svc.registry, "waits", {})
        await poll(lambda: pool.fetchval("SELECT records >= 10 FROM batch_runs WHERE id = $1", run_id),
                   "first batch committed")
        queued_id, _ = await trigger_run(pool, svc.registry, "waits", {"records": 5})
        assert await cancel_run(pool, queued_id) == "cancelled"
        assert await pool.fetchval("SELECT status FROM batch_runs WHERE id = $1", queued_id) == "cancelled"
        asked = time.monotonic()
        assert await cancel_run(pool, run_id) == "cancel_requested"
        run = await poll(lambda: pool.fetchrow(
            "SELECT * FROM batch_runs WHERE id = $1 AND finished_at IS NOT NULL", run_id), "run stopped")
        took = time.monotonic() - asked
        runs = await runs_of(pool, "waits")
    assert (run["status"], run["reason"]) == ("cancelled", "cancelled"), run
    assert len(runs) == 2, "a cancelled run is not retried"
    rows = await db.fetchval("SELECT count(*) FROM synthetic_records WHERE scope_key = $1", str(run_id))
    assert rows == run["records"] and rows >= 10, (rows, run["records"])
    assert await db.fetchval("SELECT count(*) FROM checkpoints WHERE job_name = 'waits'") == 0
    assert took < 0.7, (f"cancel took {took:.2f} s: the run waited for its next batch (1.5 s per batch) "
                        "instead of stopping in its current wait")


async def test_paused_job_is_not_claimed_until_resumed(db: Any, database_url: str, redis_url: str) -> None:
    """A paused job's queued run stays queued while the daemon ticks; resume → it is claimed and runs."""
    async with services_for(database_url, redis_url, {"held": job(params={"records": 5})}) as svc:
        pool = svc.pool
        await set_paused(pool, "held", True)
        run_id, _ = await trigger_run(pool, svc.registry, "held", {})
        async with daemon(svc) as scheduler:
            await poll(lambda: scheduler.ticks >= 5, "five ticks")
            assert await pool.fetchval("SELECT status FROM batch_runs WHERE id = $1", run_id) == "queued"
            await set_paused(pool, "held", False)
            await poll(lambda: pool.fetchval(
                "SELECT status = 'succeeded' FROM batch_runs WHERE id = $1", run_id), "resumed run succeeded")


# ------------------------------------------------------------------------------ overlap, misfire, manual

async def _occur(pool: Any, name: str) -> None:
    """One occurrence of ``name`` comes due now and is materialized."""
    await pool.execute("UPDATE batch_config SET next_run_at = now(), schedule_anchor = now() "
                       "WHERE job_name = $1", name)
    await materialize_due(pool)


async def test_overlap_skip_and_queue_one(db: Any, database_url: str, redis_url: str) -> None:
    """With a run running: overlap=skip records each occurrence skipped/overlap; queue_one queues one run
    behind it and records the further occurrences skipped/overlap (DESIGN §5)."""
    jobs = {"skipper": job(enabled=True, overlap="skip"), "queuer": job(enabled=True, overlap="queue_one")}
    async with services_for(database_url, redis_url, jobs) as svc:
        pool = svc.pool
        await pool.execute("UPDATE batch_config SET next_run_at = NULL")
        for name in jobs:
            await pool.execute("INSERT INTO batch_runs (job_name, job_type, trigger, status, started_at, "
                               "root_trigger) VALUES ($1, 'synthetic', 'manual', 'running', now(), 'manual')", name)
            for _ in range(3):
                await _occur(pool, name)
        skipper, queuer = await runs_of(pool, "skipper"), await runs_of(pool, "queuer")
    assert [(r["status"], r["reason"]) for r in skipper] == [("running", None)] + [("skipped", "overlap")] * 3
    assert skipper[1]["result"] == {"queued": 0, "running": 1}
    assert [(r["status"], r["reason"]) for r in queuer] == [
        ("running", None), ("queued", None), ("skipped", "overlap"), ("skipped", "overlap")]
    assert queuer[2]["result"] == {"queued": 1, "running": 1}


async def test_misfire_grace_skips_a_stale_latest_occurrence(db: Any, database_url: str, redis_url: str) -> None:
    """misfire_grace_seconds = 30: a latest occurrence 45 s old is recorded skipped/missed and nothing is
    queued; one 10 s old is queued; after 5 min 10 s of downtime the latest (10 s old) runs and the 5
    before it are one missed row."""
    async with services_for(database_url, redis_url, {"graceful": job(
            enabled=True, interval_minutes=1, misfire_grace_seconds=30)}) as svc:
        pool = svc.pool

        async def due(ago: str) -> list[dict[str, Any]]:
            await pool.execute("DELETE FROM batch_runs")
            await pool.execute(f"UPDATE batch_config SET next_run_at = now() - interval '{ago}', "
                               f"schedule_anchor = now() - interval '{ago}'")
            await materialize_due(pool)
            return await runs_of(pool, "graceful")

        stale = await due("45 seconds")
        assert [(r["status"], r["reason"], r["result"]["count"]) for r in stale] == [("skipped", "missed", 1)]
        nxt = await pool.fetchval("SELECT next_run_at - $1::timestamptz FROM batch_config", stale[0]["scheduled_for"])
        assert nxt == timedelta(minutes=1)
        fresh = await due("10 seconds")
        assert [(r["status"], r["trigger"]) for r in fresh] == [("queued", "schedule")]
        downtime = await due("5 minutes 10 seconds")
        assert [(r["status"], r["reason"]) for r in downtime] == [("skipped", "missed"), ("queued", None)]
        assert downtime[0]["result"]["count"] == 5
        assert downtime[1]["scheduled_for"] - downtime[0]["scheduled_for"] == timedelta(minutes=5)


async def test_manual_trigger_dedups_queued_same_params_and_always_queues(
        db: Any, database_url: str, redis_url: str) -> None:
    """A trigger while a manual run with the same params is queued returns that run's id; different params
    queue another; once that run is running, the same trigger queues a new run behind it."""
    async with services_for(database_url, redis_url, {"manual": job()}) as svc:
        pool, reg = svc.pool, svc.registry
        first, existing = await trigger_run(pool, reg, "manual", {"records": 7})
        assert not existing
        assert await trigger_run(pool, reg, "manual", {"records": 7}) == (first, True)
        other, existing = await trigger_run(pool, reg, "manual", {"records": 8})
        assert other != first and not existing
        await pool.execute("UPDATE batch_runs SET status = 'running', started_at = now() WHERE id = $1", first)
        behind, existing = await trigger_run(pool, reg, "manual", {"records": 7})
        assert behind not in (first, other) and not existing
        statuses = [(r["id"], r["status"]) for r in await runs_of(pool, "manual")]
    assert statuses == [(first, "running"), (other, "queued"), (behind, "queued")]


# ------------------------------------------------------------------------------------ priority and queues

async def _queue_run(pool: Any, name: str, priority: int, waited_minutes: float) -> int:
    run_id: int = await pool.fetchval(
        "INSERT INTO batch_runs (job_name, job_type, trigger, priority, root_trigger, queued_at) "
        "VALUES ($1, 'synthetic', 'manual', $2, 'manual', now() - make_interval(secs => $3)) RETURNING id",
        name, priority, waited_minutes * 60)
    return run_id


async def test_priority_with_aging_promotes_a_long_waiting_run(db: Any, database_url: str, redis_url: str) -> None:
    """One free slot: a priority-0 run queued 10 minutes ago (aging 1 point/min → 10) is claimed before a
    fresh priority-5 run of another job; with aging_per_minute = 0 the priority-5 run wins — both in
    claim_runs itself and in a daemon (concurrency 1) configured with that aging_per_minute."""
    jobs = {"low": job(priority=0), "high": job(priority=5)}
    for aging, winner in ((1.0, "low"), (0.0, "high")):
        async with services_for(database_url, redis_url, jobs, concurrency=1, aging_per_minute=aging) as svc:
            pool = svc.pool
            await pool.execute("DELETE FROM batch_runs")
            await _queue_run(pool, "low", 0, 10)
            await _queue_run(pool, "high", 5, 0)
            claimed = await pool.fetch(Q["claim_runs"], "w1", 1, 60.0, None, aging)
            assert [r["job_name"] for r in claimed] == [winner], (aging, [dict(r) for r in claimed])
            await pool.execute("DELETE FROM batch_runs")
            await _queue_run(pool, "low", 0, 10)
            await _queue_run(pool, "high", 5, 0)
            async with daemon(svc):
                await poll(functools.partial(pool.fetchval, "SELECT count(*) = 2 FROM batch_runs "
                                             "WHERE status = 'succeeded'"), "both runs succeeded")
            order = [r["job_name"] for r in await pool.fetch("SELECT job_name FROM batch_runs ORDER BY started_at")]
        assert order == [winner, "high" if winner == "low" else "low"], \
            f"daemon with aging_per_minute = {aging} (concurrency 1) should run {winner} first: {order}"


async def test_queues_a_worker_claims_only_the_queues_it_serves(db: Any, database_url: str, redis_url: str) -> None:
    """claim_runs with queues ['a'] claims only the queue-a job's run; with NULL (all queues) it claims both;
    a daemon configured with BATCHER_QUEUES=a runs only queue-a work."""
    jobs = {"job-a": job(queue="a", params={"records": 5}), "job-b": job(queue="b", params={"records": 5})}
    async with services_for(database_url, redis_url, jobs, queues=("a",)) as svc:
        pool = svc.pool
        for name in jobs:
            await _queue_run(pool, name, 0, 0)
        only_a = await pool.fetch(Q["claim_runs"], "w-a", 8, 60.0, ["a"], 1.0)
        assert [r["job_name"] for r in only_a] == ["job-a"]
        await pool.execute("DELETE FROM batch_runs")
        for name in jobs:
            await _queue_run(pool, name, 0, 0)
        both = await pool.fetch(Q["claim_runs"], "w-all", 8, 60.0, None, 1.0)
        assert sorted(r["job_name"] for r in both) == ["job-a", "job-b"]
        await pool.execute("DELETE FROM batch_runs")
        a_run, b_run = [await _queue_run(pool, name, 0, 0) for name in jobs]
        async with daemon(svc) as scheduler:
            await poll(lambda: pool.fetchval("SELECT status = 'succeeded' FROM batch_runs WHERE id = $1", a_run),
                       "queue-a run succeeded")
            ticks = scheduler.ticks
            await poll(lambda: scheduler.ticks >= ticks + 3, "three more ticks")
        assert await pool.fetchval("SELECT status FROM batch_runs WHERE id = $1", b_run) == "queued"


# ------------------------------------------------------------------------------------ finish vs. claim

async def _finish_through_a_deadlock(svc: Services, name: str) -> tuple[dict[str, Any], int]:
    """Run ``name`` once while another transaction holds its config row and then updates its run row, so
    the run's final-status transaction deadlocks with it; returns (the run's summary, its id)."""
    from batcher.runner import RunExecution

    pool = svc.pool
    run_id, _ = await trigger_run(pool, svc.registry, name, {})
    run = dict((await pool.fetch(Q["claim_runs"], "w-finish", 1, 30.0, None, 1.0))[0])
    async with pool.acquire() as claimer:
        tx = claimer.transaction()
        await tx.start()
        await claimer.execute("SELECT 1 FROM batch_config WHERE job_name = $1 FOR UPDATE", name)
        finishing = asyncio.create_task(RunExecution(svc, run, lease_seconds=30.0).execute())
        await poll(lambda: pool.fetchval(  # at its first statement: it locks the job rows before the run row
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            claimer.get_server_pid()), "finish waits for the config row")
        with contextlib.suppress(Exception):  # the claim side may be the deadlock victim instead
            await claimer.execute("UPDATE batch_runs SET worker_id = 'w-claim' WHERE id = $1", run_id)
        await tx.rollback()
    return await asyncio.wait_for(finishing, 20), run_id


async def test_finish_survives_a_deadlock_with_a_concurrent_claim(db: Any, database_url: str, redis_url: str) -> None:
    """The final-status transaction locks its run row (fence) and then the job's config row (last_success_at);
    a concurrent claim_runs holds the config row (FOR UPDATE OF c) and then waits for that run row (it read the
    run as queued in its snapshot) — a deadlock seen in bench/schedule_lag.py. Whichever side PostgreSQL
    aborts, the run must still end succeeded (the finish retries), not crash and be reaped as abandoned."""
    async with services_for(database_url, redis_url, {"contended": job(params={"records": 0})}) as svc:
        summary, run_id = await _finish_through_a_deadlock(svc, "contended")
        row = await svc.pool.fetchrow("SELECT status, last_success_at IS NOT NULL AS marked FROM batch_runs "
                                      "JOIN batch_config USING (job_name) WHERE id = $1", run_id)
    assert row is not None and summary["status"] == "succeeded" and tuple(row) == ("succeeded", True), (summary, row)

