"""Retention and chain clean-up (issue 14 defects 4 and 14): the retry_of index, pruning in bounded
transactions, and run-scoped checkpoints that die with a chain that failed for good."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from batcher import maintenance
from batcher.context import RunState
from batcher.maintenance import MAINTENANCE_LOCK_KEY, run_maintenance
from batcher.models import RunOutcome
from batcher.runs import RunWriter
from batcher.testing import run_job_once, test_settings

_PROBE = """
CREATE TABLE prune_probe (txid bigint NOT NULL, n bigint NOT NULL);
CREATE FUNCTION prune_probe() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO prune_probe SELECT txid_current(), count(*) FROM doomed;
    RETURN NULL;
END $$;
CREATE TRIGGER prune_probe AFTER DELETE ON batch_runs REFERENCING OLD TABLE AS doomed
    FOR EACH STATEMENT EXECUTE FUNCTION prune_probe();
"""
_UNPROBE = ("DROP TRIGGER IF EXISTS prune_probe ON batch_runs; DROP FUNCTION IF EXISTS prune_probe();"
            "DROP TABLE IF EXISTS prune_probe;")


async def _old_runs(db: asyncpg.Pool, n: int, *, days: int = 40, status: str = "failed") -> list[int]:
    """n finished runs of job 'a' that finished ``days`` ago, each the retry of the one before."""
    ids = [r["id"] for r in await db.fetch(
        "INSERT INTO batch_runs (job_name, job_type, trigger, status, finished_at) "
        "SELECT 'a', 'synthetic', 'retry', $2, now() - make_interval(days => $3) FROM generate_series(1, $1) "
        "RETURNING id", n, status, days)]
    await db.execute("UPDATE batch_runs SET retry_of = id - 1 WHERE id > $1 AND id <= $2", ids[0], ids[-1])
    return ids


async def test_retention_prunes_in_bounded_transactions(db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 4: more old runs than one batch are pruned in several transactions of at most ``batch_size``
    rows each (so no single long transaction holds back vacuum); a newer retry of a pruned run keeps its
    row with ``retry_of`` nulled by the foreign key; recent and queued runs stay."""
    old = await _old_runs(db, 25)
    recent = await db.fetchval("INSERT INTO batch_runs (job_name, job_type, trigger, status, finished_at, retry_of) "
                               "VALUES ('a', 'synthetic', 'retry', 'failed', now(), $1) RETURNING id", old[-1])
    await db.execute("INSERT INTO batch_runs (job_name, job_type, trigger) VALUES ('a', 'synthetic', 'manual')")
    await db.execute(_PROBE)
    try:
        monkeypatch.setattr(maintenance, "PRUNE_BATCH", 10, raising=False)
        result = await run_maintenance(db, 30)
        batches = [(r["txid"], r["n"]) for r in await db.fetch("SELECT txid, n FROM prune_probe ORDER BY txid")]
    finally:
        await db.execute(_UNPROBE)
    assert result is not None and result["runs_pruned"] == 25
    deleting = [(txid, n) for txid, n in batches if n]
    assert len(deleting) >= 3 and len({txid for txid, _ in deleting}) == len(deleting), batches
    assert all(n <= 10 for _, n in deleting) and sum(n for _, n in deleting) == 25, batches
    assert await db.fetchval("SELECT count(*) FROM batch_runs") == 2
    assert await db.fetchval("SELECT retry_of FROM batch_runs WHERE id = $1", recent) is None


async def test_maintenance_lock_keeps_a_second_daemon_out(db: asyncpg.Pool) -> None:
    """Defect 4: the maintenance lock (now held on one connection across the short prune transactions)
    still makes a second daemon skip the run while the first holds it, and is released afterwards."""
    await _old_runs(db, 3)
    async with db.acquire() as holder:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK_KEY)
        try:
            assert await run_maintenance(db, 30) is None
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK_KEY)
    result = await run_maintenance(db, 30)
    assert result is not None and result["runs_pruned"] == 3
    async with db.acquire() as other:  # released: another session takes it at once
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK_KEY)
        await other.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK_KEY)


async def test_retry_of_lookup_uses_an_index(db: asyncpg.Pool) -> None:
    """Defect 4: ``retry_of = $1`` (what the ON DELETE SET NULL action runs for every deleted run, and what
    ``trigger --wait`` follows) is served by the retry_of index, also under a generic plan."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute("PREPARE retry_lookup(bigint) AS SELECT id FROM batch_runs WHERE retry_of = $1")
        try:
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE retry_lookup(1)"))
        finally:
            await conn.execute("DEALLOCATE retry_lookup")
    assert "batch_runs_retry_of" in plan, plan
    assert "Seq Scan" not in plan, plan


# ---- defect 14: run-scoped checkpoints of chains that failed for good


async def _claimed_run(db: asyncpg.Pool, root_trigger: str) -> dict[str, Any]:
    row = await db.fetchrow(
        "INSERT INTO batch_runs (job_name, job_type, trigger, root_trigger, status, claim_token, worker_id, "
        "started_at, lease_expires_at) VALUES ('a', 'synthetic', $1, $1, 'running', gen_random_uuid(), 'w', now(), "
        "now() + interval '1 minute') RETURNING *", root_trigger)
    return dict(row)


async def _checkpoint(db: asyncpg.Pool, scope_key: str, stream: str = "run_insert") -> None:
    await db.execute("INSERT INTO checkpoints (job_name, stream, scope_key, cursor) VALUES ('a', $1, $2, '{}')",
                     stream, scope_key)


async def _scopes(db: asyncpg.Pool) -> set[str]:
    return {r["scope_key"] for r in await db.fetch("SELECT scope_key FROM checkpoints WHERE job_name = 'a'")}


@pytest.mark.parametrize(("root_trigger", "outcome", "kept"), [
    ("schedule", RunOutcome("failed", "permanent_error"), False),
    ("cli", RunOutcome("failed", "retries_exhausted"), False),
    ("backfill", RunOutcome("failed", "timeout"), False),
    ("manual", RunOutcome("cancelled", "user"), False),
    ("schedule", RunOutcome("failed", "transient_error", retry=True), True),
    ("schedule", RunOutcome("cancelled", "shutdown", retry=True), True),
    ("cli", RunOutcome("cancelled", "shutdown"), True),
], ids=["failed", "cli-failed", "backfill-timeout", "cancelled", "retry-queued", "shutdown-retry", "cli-shutdown"])
async def test_chain_that_failed_for_good_drops_its_run_checkpoints(
        db: asyncpg.Pool, root_trigger: str, outcome: RunOutcome, kept: bool) -> None:
    """Defect 14: a run that ends its chain for good (failed or cancelled, no retry queued) deletes the
    chain's run-scoped checkpoints (scope_key = root run id) in its final transaction; a chain that goes on
    (a retry queued) keeps them, and so does a run-job chain stopped by a shutdown (the next run-job resumes
    it). Job-scoped checkpoints are never touched."""
    run = await _claimed_run(db, root_trigger)
    await _checkpoint(db, str(run["id"]))
    await _checkpoint(db, "", stream="job_insert")
    await RunWriter(db, run, 60, RunState()).finish(outcome)
    assert await _scopes(db) == ({"", str(run["id"])} if kept else {""})


async def test_run_job_that_fails_for_good_leaves_no_run_checkpoint(
        db: asyncpg.Pool, database_url: str, redis_url: str) -> None:
    """Defect 14 end to end: a run-job of a run-scoped synthetic job commits its first batch (and its
    checkpoint), then fails permanently; the failed chain's checkpoint is gone."""
    job = {"type": "synthetic", "params": {"records": 20, "batch_size": 10, "fail_at_batch": 2,
                                           "fail_mode": "permanent", "scope": "run"}}
    summary = await run_job_once(test_settings(database_url, redis_url, jobs={"a": job}), "a")
    assert summary["status"] == "failed" and summary["records"] == 10
    assert await _scopes(db) == set()


async def test_maintenance_prunes_checkpoints_of_dead_chains(db: asyncpg.Pool) -> None:
    """Defect 14: maintenance deletes run-scoped checkpoints whose chain has no queued or running run and
    finished before the retention (or whose runs were already pruned); it keeps those of a chain with a
    queued retry or a recent finish, and every job-scoped checkpoint."""
    (old,) = await _old_runs(db, 1)
    (waiting,) = await _old_runs(db, 1)
    await db.execute("INSERT INTO batch_runs (job_name, job_type, trigger, root_run_id, retry_of) "
                     "VALUES ('a', 'synthetic', 'retry', $1, $1)", waiting)
    (recent,) = await _old_runs(db, 1, days=1)
    for scope in (str(old), str(waiting), str(recent), "999999", ""):
        await _checkpoint(db, scope)
    result = await run_maintenance(db, 30)
    assert result is not None and result["checkpoints_pruned"] == 2
    assert await _scopes(db) == {str(waiting), str(recent), ""}
