"""Issue 14, defect 12: ``dead-letters replay`` runs as a run of the job, never beside a live one.

It used to write straight into the job's tables whatever ran, so on ``update`` streams a stale payload
could overwrite a newer row a live run had just written.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from batcher.context import RunState
from batcher.models import RunOutcome
from batcher.replay import REPLAY_PARAMS, replay_as_run
from batcher.runjob import JobBusy
from batcher.runs import RunWriter
from batcher.store import Q
from batcher.testing import run_job_once
from batcher.worker import Worker
from tests.integration.test_policies import SYNTH, poll, runs_of, services_for

UNRESOLVED = "SELECT count(*) FROM dead_letters WHERE job_name = 'poison' AND resolved_at IS NULL"


async def test_replay_waits_for_a_live_run_of_the_job_and_runs_as_a_run_of_it(
        db: Any, database_url: str, redis_url: str) -> None:
    """While a live worker runs the job, a replay refuses (JobBusy, with --no-wait) or waits — writing and
    resolving nothing; once that run finished, it claims a run of the job (trigger cli, params
    {"replay": "dead-letters"}) that starts after it, writes the fixed rows, resolves the dead letters
    in its name, and ends succeeded/replay with the figures as its result."""
    async with services_for(database_url, redis_url, {}) as svc:
        pool = svc.pool
        summary = await run_job_once(svc.settings, SYNTH, {"records": 40, "poison_every": 10, "batch_size": 20},
                                     job_name="poison")
        assert summary["dead_letters"] == 4
        await pool.execute("UPDATE dead_letters SET payload = replace(payload, '\\u0000', '') "
                           "WHERE job_name = 'poison'")
        streams = {s.name: s for s in svc.registry[SYNTH].streams}
        worker = Worker(svc.database_url, pool, lease_seconds=10.0, queues=None)
        await worker.start()
        try:
            live_id = await pool.fetchval(Q["insert_queued_run"], "poison", SYNTH, "manual", 0, {}, 0.0, None,
                                          None, 1, 0, "manual")
            live = dict(await pool.fetchrow(Q["claim_run_by_id"], live_id, worker.worker_id, 10.0))
            with pytest.raises(JobBusy, match="is running on live worker"):
                await replay_as_run(svc, "poison", streams, wait=False)
            with capture_logs() as logs:
                replay = asyncio.ensure_future(replay_as_run(svc, "poison", streams, wait=True))
                await poll(lambda: any(e["event"] == "job_busy_waiting" for e in logs),
                           "the replay waits for the live run")
            assert not replay.done() and await pool.fetchval(UNRESOLVED) == 4, "the replay wrote beside it"
            ended = await RunWriter(pool, live, 10.0, RunState()).finish(RunOutcome("succeeded"))
            result = await asyncio.wait_for(replay, 15)
        finally:
            await worker.stop()
        runs = await runs_of(pool, "poison")
        resolved_by = await pool.fetch("SELECT DISTINCT run_id FROM dead_letters WHERE job_name = 'poison'")
    assert result["resolved"] == 4 and result["written"] == 4 and await db.fetchval(UNRESOLVED) == 0
    run = next(r for r in runs if r["id"] == result["run_id"])
    assert (run["trigger"], run["params"], run["status"], run["reason"]) == \
        ("cli", REPLAY_PARAMS, "succeeded", "replay"), run
    assert run["result"]["resolved"] == 4 and run["started_at"] >= ended["finished_at"]
    assert [r["run_id"] for r in resolved_by] == [run["id"]]
