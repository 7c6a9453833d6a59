"""Issue 14, defect 5: a requested cancel ends the chain ``cancelled`` wherever the run is.

Three places used to lose it: the reaper (a dead worker's run was abandoned and retried), a shutdown (its
reason ``shutdown`` won and queued a retry) and ``run-job``'s takeover (it resumed the cancelled chain).
"""

from __future__ import annotations

import secrets
from typing import Any

from batcher.commands import trigger_run
from batcher.context import RunState
from batcher.models import RunOutcome
from batcher.recovery import reap_abandoned
from batcher.runjob import claim_foreground_run
from batcher.runs import RunWriter
from batcher.scheduler import Scheduler
from batcher.store import Q
from batcher.worker import Worker
from tests.inprocess import running_worker
from tests.integration.test_policies import SYNTH, job, poll, runs_of, services_for

JOBS = {"victim": job(params={"records": 1000, "delay_ms": 3000}),
        "after": {"type": SYNTH, "depends_on": ["victim"]}}


async def _ghost_run(pool: Any, params: dict[str, Any], root_trigger: str) -> dict[str, Any]:
    """A running run of ``victim`` on a worker whose liveness lock is free (it died), cancel requested."""
    await pool.execute("INSERT INTO workers (worker_id, host, pid, version, lock_key) "
                       "VALUES ('ghost', 'nowhere', 1, 'x', $1) ON CONFLICT DO NOTHING",
                       secrets.randbelow(2**31 - 1) + 1)
    run_id = await pool.fetchval(Q["insert_queued_run"], "victim", SYNTH, root_trigger, 0, params, 0.0,
                                 None, None, 1, 0, root_trigger)
    await pool.fetchrow(Q["claim_run_by_id"], run_id, "ghost", 60.0)
    assert await pool.fetchval(Q["request_cancel"], run_id, "cancelled") == run_id
    return dict(await pool.fetchrow(Q["get_run"], run_id))


async def test_cancel_is_honoured_by_the_reaper_after_the_worker_died(
        db: Any, database_url: str, redis_url: str) -> None:
    """The reaper ends a dead worker's run whose cancel was requested ``cancelled``/``cancelled`` — no
    retry is queued — and records its dependent skipped as for any cancel (``upstream_cancelled``)."""
    async with services_for(database_url, redis_url, JOBS) as svc:
        run = await _ghost_run(svc.pool, {}, "manual")
        assert await reap_abandoned(svc.pool) == 1
        victim, after = await runs_of(svc.pool, "victim"), await runs_of(svc.pool, "after")
    assert [(r["status"], r["reason"]) for r in victim] == [("cancelled", "cancelled")], "no retry queued"
    assert [(r["status"], r["reason"]) for r in after] == [("skipped", "upstream_cancelled")]
    assert after[0]["result"] == {"upstream": "victim", "upstream_run_id": run["id"],
                                  "upstream_reason": "cancelled"}


async def test_cancel_wins_over_a_shutdown_that_began_first_or_pending(
        db: Any, database_url: str, redis_url: str) -> None:
    """A cancel request not yet seen by the worker when a drain stops the run ends it
    ``cancelled``/``cancelled`` with no retry (``shutdown`` used to win and queue one); and a cancel that
    arrives after the shutdown signal replaces its reason."""
    async with services_for(database_url, redis_url, JOBS) as svc:
        pool, d = svc.pool, svc.settings.daemon
        worker = Worker(svc.database_url, pool, lease_seconds=d.lease_seconds, queues=d.queues)
        await worker.start()
        scheduler = Scheduler(svc, worker)
        await scheduler.start()
        try:
            run_id, _ = await trigger_run(pool, svc.registry, "victim", {})
            await poll(lambda: pool.fetchval("SELECT records >= 10 FROM batch_runs WHERE id = $1", run_id),
                       "first batch committed")
            # requested, not delivered yet (no NOTIFY; the next batch is 3 s away): then the daemon stops
            await pool.execute("UPDATE batch_runs SET cancel_requested = 'cancelled' WHERE id = $1", run_id)
            await scheduler.drain(0)
        finally:
            await worker.stop()
        runs = await runs_of(pool, "victim")
    assert [(r["status"], r["reason"]) for r in runs] == [("cancelled", "cancelled")], "no retry queued"
    state = RunState()
    state.request_cancel("shutdown")
    state.request_cancel("cancelled")
    assert state.cancel_reason == "cancelled"


async def test_run_job_does_not_resume_a_chain_cancelled_by_the_user(
        db: Any, database_url: str, redis_url: str) -> None:
    """run-job takes over neither a dead worker's cli run whose cancel was requested (it ends cancelled and
    the new run starts a chain of its own) nor a cli run stopped by a shutdown while a cancel was pending
    (it ends cancelled/cancelled, not cancelled/shutdown)."""
    params = {"records": 5}
    async with services_for(database_url, redis_url, JOBS) as svc, \
            running_worker(svc, lease_seconds=10.0, kind="run-job") as worker:
        dead = await _ghost_run(svc.pool, params, "cli")
        fresh = await claim_foreground_run(svc, worker, "victim", params, wait=False)
        ended = dict(await svc.pool.fetchrow(Q["get_run"], dead["id"]))
        assert (ended["status"], ended["reason"]) == ("cancelled", "cancelled")
        assert (fresh["trigger"], fresh["retry_of"], fresh["root_run_id"]) == ("cli", None, fresh["id"]), \
            "the cancelled chain was resumed"

        assert await svc.pool.fetchval(Q["request_cancel"], fresh["id"], "cancelled") == fresh["id"]
        writer = RunWriter(svc.pool, fresh, 10.0, RunState())
        row = await writer.finish(RunOutcome("cancelled", "shutdown", ["run stopped: shutdown"]))
        assert (row["status"], row["reason"]) == ("cancelled", "cancelled")
        third = await claim_foreground_run(svc, worker, "victim", params, wait=False)
        assert (third["trigger"], third["retry_of"], third["root_run_id"]) == ("cli", None, third["id"]), \
            "the chain stopped by a shutdown with a cancel pending was resumed"
