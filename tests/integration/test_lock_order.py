"""Issue 14, defect 6: one lock order everywhere — job rows (a job and its dependents, by name), then runs.

``run-job`` locked the job row and then waited on the running run's row while a finishing run of the same
job held its run row and then waited on the job row: a deadlock, a traceback for the user. Concurrent
finishers of a diamond's upstreams locked their own job rows and then their dependents' in name order, so
a dependent named before an upstream closed a cycle. The finishes below call ``RunWriter.finish`` directly
(no retry), so any deadlock shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import asyncpg

from batcher.context import RunState
from batcher.models import RunOutcome
from batcher.runjob import JobBusy, claim_foreground_run
from batcher.runs import RunWriter
from batcher.store import Q
from tests.inprocess import running_worker
from tests.integration.test_policies import SYNTH, job, poll, runs_of, services_for

LOCK_WAITERS = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")


async def _running(pool: Any, name: str, worker_id: str) -> dict[str, Any]:
    run_id = await pool.fetchval(Q["insert_queued_run"], name, SYNTH, "manual", 0, {}, 0.0, None, None, 1, 0,
                                 "manual")
    return dict(await pool.fetchrow(Q["claim_run_by_id"], run_id, worker_id, 10.0))


def _finish(pool: Any, run: dict[str, Any]) -> Awaitable[Any]:
    return RunWriter(pool, run, 10.0, RunState()).finish(RunOutcome("succeeded"))


async def _behind_a_held_job_row(pool: Any, name: str, *steps: Awaitable[Any]) -> list[Any]:
    """Start ``steps`` one by one while another transaction holds ``name``'s config row, each once the
    previous one waits for a lock; then release the row and return what each step returned or raised."""
    tasks = []
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM batch_config WHERE job_name = $1 FOR UPDATE", name)
        for n, step in enumerate(steps, 1):
            tasks.append(asyncio.ensure_future(step))
            await poll(lambda n=n: pool.fetchval(f"SELECT ({LOCK_WAITERS}) = $1", n), f"{n} waiting")
        await tx.rollback()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_run_job_and_a_finishing_run_of_the_job_never_deadlock(
        db: Any, database_url: str, redis_url: str) -> None:
    """run-job waiting for the job row first, the finisher of the job's running run second: once the row is
    free neither side is a deadlock victim — run-job reports the job busy (a live worker runs it) or claims
    after the finish, and the run ends succeeded. Then 50 rounds of both at once (a barrier) behave alike."""
    async with services_for(database_url, redis_url, {"busy": job(params={"records": 5})}) as svc, \
            running_worker(svc, lease_seconds=10.0, kind="run-job") as worker:
        pool = svc.pool
        run = await _running(pool, "busy", worker.worker_id)
        claimed, finished = await _behind_a_held_job_row(
            pool, "busy", claim_foreground_run(svc, worker, "busy", {}, wait=False), _finish(pool, run))
        assert not isinstance(finished, BaseException), f"the finish failed: {finished!r}"
        assert isinstance(claimed, JobBusy | dict), f"run-job failed: {claimed!r}"
        assert finished["status"] == "succeeded"
        current = claimed if isinstance(claimed, dict) else await _running(pool, "busy", worker.worker_id)
        for _ in range(50):
            barrier = asyncio.Barrier(2)

            async def after_barrier(step: Awaitable[Any], barrier: asyncio.Barrier = barrier) -> Any:
                await barrier.wait()
                return await step

            finished, claimed = await asyncio.gather(
                after_barrier(_finish(pool, current)),
                after_barrier(claim_foreground_run(svc, worker, "busy", {}, wait=False)), return_exceptions=True)
            assert isinstance(finished, dict) and finished["status"] == "succeeded", repr(finished)
            assert isinstance(claimed, JobBusy | dict), f"run-job failed: {claimed!r}"
            current = claimed if isinstance(claimed, dict) else \
                await claim_foreground_run(svc, worker, "busy", {}, wait=False)


async def test_concurrent_finishes_of_a_diamond_queue_the_dependent_once(
        db: Any, database_url: str, redis_url: str) -> None:
    """x → y, {x, y} → a (the dependent named first): x's and y's finishers both wait for a's row; once
    it is free, both commit (no deadlock: each locks its job and its dependents in one name order) and
    a is queued exactly once."""
    jobs = {"x": job(), "y": {"type": SYNTH, "depends_on": ["x"]}, "a": {"type": SYNTH, "depends_on": ["x", "y"]}}
    async with services_for(database_url, redis_url, jobs) as svc:
        pool = svc.pool
        x, y = await _running(pool, "x", "w"), await _running(pool, "y", "w")
        results = await _behind_a_held_job_row(pool, "a", _finish(pool, x), _finish(pool, y))
        assert not any(isinstance(r, asyncpg.PostgresError) for r in results), results
        assert [r["status"] for r in results] == ["succeeded", "succeeded"]
        dependent = await runs_of(pool, "a")
        assert [(r["trigger"], r["status"]) for r in dependent] == [("dependency", "queued")]
        for round_ in range(20):  # both at once (a barrier); the dependent's queued run cancelled each round
            await pool.execute("UPDATE batch_runs SET status = 'cancelled' WHERE status = 'queued'")
            barrier = asyncio.Barrier(2)

            async def after_barrier(run: dict[str, Any], barrier: asyncio.Barrier = barrier) -> Any:
                await barrier.wait()
                return await _finish(pool, run)

            x, y = await _running(pool, "x", "w"), await _running(pool, "y", "w")
            results = await asyncio.gather(after_barrier(x), after_barrier(y), return_exceptions=True)
            assert [r["status"] if isinstance(r, dict) else r for r in results] == ["succeeded"] * 2, results
            queued = await pool.fetchval("SELECT count(*) FROM batch_runs WHERE job_name = 'a' "
                                         "AND status = 'queued'")
            assert queued == 1, f"round {round_}: the dependent queued {queued} times"
