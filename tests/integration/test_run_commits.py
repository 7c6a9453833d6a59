"""A run's fenced transactions under slow writes, unstorable text and ambiguous commits (issue 14: 2, 9, 10).

Runs go through the real :class:`RunExecution` / :class:`RunWriter` on the test database, with a probe
handler (a :class:`SyntheticHandler` whose ``run`` the test supplies) swapped into the services' registry.
Faults are real: a row lock held by the test, text PostgreSQL cannot hold, and a pool whose connections
lose their link (or their task) exactly around ``COMMIT``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import asyncpg
import pytest

from batcher import store
from batcher.context import RunState
from batcher.handler import Batch, Handler, Rejected
from batcher.models import Services
from batcher.recovery import reap_abandoned
from batcher.runner import RunExecution
from batcher.runs import RunWriter
from batcher.store import Q
from batcher.testing import test_services, test_settings
from batcher.worker import Worker
from handlers.synthetic import SyntheticHandler
from tests.polling import wait_for

JOB = "probe"
STREAM = SyntheticHandler.stream("run_ignore")
Source = Callable[[Any], AsyncIterator[Batch]]


@pytest.fixture
async def services(db: Any, database_url: str, redis_url: str) -> AsyncIterator[Services]:
    jobs = {JOB: {"type": "synthetic", "interval_minutes": 1440, "enabled": False, "max_retries": 0,
                  "params": {"records": 0}}}
    async with test_services(test_settings(database_url, redis_url, jobs=jobs), http=False) as svc:
        yield svc


def with_probe(services: Services, source: Source, pool: asyncpg.Pool | None = None) -> Services:
    """The services with the job's type running ``source(ctx)`` (and, when given, another pool)."""
    class Probe(SyntheticHandler):
        async def run(self, ctx: Any, params: Any) -> AsyncIterator[Batch]:
            async for batch in source(ctx):
                yield batch

    registry: dict[str, type[Handler]] = {**services.registry, "synthetic": Probe}
    return dataclasses.replace(services, registry=registry, pool=pool or services.pool)


async def claim(pool: asyncpg.Pool, worker_id: str, lease: float) -> dict[str, Any]:
    run_id = await pool.fetchval("INSERT INTO batch_runs (job_name, job_type, trigger, root_trigger) "
                                 "VALUES ($1, 'synthetic', 'manual', 'manual') RETURNING id", JOB)
    return dict(await pool.fetchrow(Q["claim_run_by_id"], run_id, worker_id, lease))


async def execute(services: Services, source: Source, *, pool: asyncpg.Pool | None = None,
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run of the probe to its end: (summary, the run's row)."""
    run = await claim(services.pool, "w-test", 10.0)
    summary = await RunExecution(with_probe(services, source, pool), run, lease_seconds=10.0).execute()
    row = await services.pool.fetchrow("SELECT * FROM batch_runs WHERE id = $1", run["id"])
    return summary, dict(row)


def batch(run_id: int, seq: int, *, reason: str | None = None) -> Batch:
    rejected = [Rejected(raw={"seq": seq}, reason=reason)] if reason else []
    return Batch(stream=STREAM.name, records=[(str(run_id), seq, f"v{seq}", seq, {})], rejected=rejected,
                 checkpoint={"next_seq": seq + 1})


# ------------------------------------------------------------------- 2: a batch longer than the lease

async def test_batch_longer_than_the_lease_commits_a_live_lease(services: Services) -> None:
    """Issue 14, defect 2. The fence renews the lease from the transaction's start (``now()``), and the
    heartbeat skips the row the batch holds: a batch that waits on a lock for longer than the lease used to
    commit a lease that had already expired, and the reaper abandoned the live run. Now the lease is renewed
    from the clock at the end of the batch: after a 2 s lease and a >2 s lock wait the committed lease lies
    past the moment the wait outlived the lease, and a reaper right after the commit leaves the run alone."""
    pool, lease = services.pool, 2.0
    worker = Worker(services.database_url, pool, lease_seconds=lease, queues=None)
    await worker.start()
    blocker = await pool.acquire()
    try:
        run = await claim(pool, worker.worker_id, lease)
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("INSERT INTO synthetic_records (scope_key, seq, value, amount) VALUES ($1, 1, 'held', 1)",
                              str(run["id"]))
        writer = RunWriter(pool, run, lease, RunState())
        committing = asyncio.ensure_future(writer.commit_batch(STREAM, batch(run["id"], 1), run["id"]))
        expired_at = await wait_for(lambda: pool.fetchval(
            "SELECT clock_timestamp() FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)) "
            "AND clock_timestamp() > xact_start + make_interval(secs => $2 + 0.3)", blocker.get_server_pid(), lease),
            timeout=20, what="the batch waits on the row lock for longer than the lease")
        await blocking.rollback()
        result = await asyncio.wait_for(committing, 20)
        after = await pool.fetchrow("SELECT status, lease_expires_at FROM batch_runs WHERE id = $1", run["id"])
        reaped = await reap_abandoned(pool)
    finally:
        await pool.release(blocker)
        await worker.stop()
    assert result.written == 1
    assert after["lease_expires_at"] > expired_at, "the committed lease expired before the commit"
    assert reaped == 0 and after["status"] == "running"
    assert await pool.fetchval("SELECT status FROM batch_runs WHERE id = $1", run["id"]) == "running"


# ------------------------------------------------------------------------ 9: text PostgreSQL cannot hold

async def test_lone_surrogate_in_an_error_message_is_stored_escaped(services: Services) -> None:
    """Issue 14, defect 9. A handler failing with a lone surrogate (and a NUL) in its message used to crash
    ``finish`` (UnicodeEncodeError escaped its retry loop; the run stayed running until reaped). The run now
    ends failed, with the message stored escaped."""
    async def source(ctx: Any) -> AsyncIterator[Batch]:
        yield batch(ctx.run_id, 1)
        raise RuntimeError("upstream said \ud800 and \x00")

    summary, row = await execute(services, source)
    assert (row["status"], row["reason"], row["records"]) == ("failed", "retries_exhausted", 1), row
    assert row["errors"] == ["upstream said \\ud800 and \\u0000"]
    assert summary["status"] == "failed"
    logged = await services.pool.fetchval("SELECT fields->>'error' FROM run_logs WHERE run_id = $1 "
                                          "AND event = 'run_attempt_failed'", row["id"])
    assert logged is not None and "\\ud800" in logged


async def test_lone_surrogate_in_a_log_field_is_stored_escaped(services: Services) -> None:
    """Issue 14, defect 9. A handler logging a field with a lone surrogate (in its value, its key and the
    event name) used to fail the batch and then crash ``finish``. The run now succeeds and the run log
    keeps the entry with the surrogate escaped as ``\\ud800``."""
    async def source(ctx: Any) -> AsyncIterator[Batch]:
        ctx.log.info("probe_logged", label="bad \ud800 label", **{"k\udc80": 1})
        ctx.log.info("probe \ud800 event")
        yield batch(ctx.run_id, 1)

    _, row = await execute(services, source)
    assert (row["status"], row["records"]) == ("succeeded", 1), row
    logs = {r["event"]: r["fields"] for r in await services.pool.fetch(
        "SELECT event, fields FROM run_logs WHERE run_id = $1", row["id"])}
    assert logs["probe_logged"]["label"] == "bad \\ud800 label"
    assert logs["probe_logged"]["k\\udc80"] == 1
    assert "probe \\ud800 event" in logs


async def test_finish_that_cannot_encode_its_writes_still_ends_the_run(services: Services) -> None:
    """Issue 14, defect 9. Whatever non-database error encoding the final writes raises (here a log entry
    holding an object JSON cannot encode), ``finish`` never leaves the run running: it stores the outcome
    without the unstorable entries and says so in the run's errors."""
    async def source(ctx: Any) -> AsyncIterator[Batch]:
        ctx.state.logs.append(("info", "raw_entry", {"unencodable": object()}))
        yield batch(ctx.run_id, 1)

    summary, row = await execute(services, source)
    assert row["status"] == "failed" and summary["status"] == "failed", row
    assert any("not JSON serializable" in e for e in row["errors"]), row["errors"]
    assert any("could not be stored" in e for e in row["errors"]), row["errors"]
    assert row["lease_expires_at"] is None


# ---------------------------------------------------------------------------- 10: an ambiguous COMMIT

class CommitFaults(asyncpg.Connection):  # type: ignore[misc]
    """A connection that, while armed, breaks around its next ``COMMIT``:

    - ``cancel``: the commit lands, then the caller sees ``CancelledError`` (a cancel arriving with the reply);
    - ``drop``: the commit lands, then the connection dies (``ConnectionDoesNotExistError``);
    - ``drop_before``: the connection dies before sending ``COMMIT`` (the transaction rolls back);
    - ``drop_unchecked``: as ``drop``, and the check that follows fails too (the next fence settles it).
    """

    armed: ClassVar[list[str]] = []
    fail_check: ClassVar[list[bool]] = []

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        if query == Q["run_commit_seq"] and CommitFaults.fail_check:
            CommitFaults.fail_check.pop()
            raise asyncpg.ConnectionDoesNotExistError("connection lost while checking")
        return await super().fetchval(query, *args, column=column, timeout=timeout)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        if query != "COMMIT;" or not CommitFaults.armed:
            return str(await super().execute(query, *args, timeout=timeout))
        fault = CommitFaults.armed.pop()
        if fault == "drop_unchecked":
            CommitFaults.fail_check.append(True)
        if fault == "drop_before":
            self.terminate()
            raise asyncpg.ConnectionDoesNotExistError("connection lost before COMMIT")
        await super().execute(query, *args, timeout=timeout)
        if fault == "cancel":
            raise asyncio.CancelledError()
        self.terminate()
        raise asyncpg.ConnectionDoesNotExistError("connection lost during COMMIT")


@pytest.mark.parametrize("fault", ["cancel", "drop", "drop_before", "drop_unchecked"])
async def test_ambiguous_commit_counts_once(services: Services, database_url: str, fault: str) -> None:
    """Issue 14, defect 10. When ``COMMIT`` of a batch landed but its caller saw a cancellation or a lost
    connection, ``finish`` used to write that batch's API calls, bytes, log entries and errors again. Each
    batch now writes a commit sequence number; after an ambiguous commit the writer asks a fresh connection
    whether it landed (or, when that check fails too, the next fence does). Every counter, log entry and
    error ends up counted exactly once — also when the commit did not land (``drop_before``), where
    nothing may be lost either."""
    made = {"calls": 0, "bytes": 0, "logs": 0, "batches": 0}

    async def source(ctx: Any) -> AsyncIterator[Batch]:
        for seq in (1, 2, 3):
            ctx.state.add_api_call(2)
            ctx.state.add_ingress_bytes(100)
            ctx.log.info("probe_batch", seq=seq)
            made["calls"], made["bytes"], made["logs"] = made["calls"] + 2, made["bytes"] + 100, made["logs"] + 1
            yield batch(ctx.run_id, seq, reason=f"reject {seq}")

    faulty = await asyncpg.create_pool(database_url, min_size=1, max_size=4, init=store.init_connection,
                                       connection_class=CommitFaults)
    try:
        CommitFaults.armed[:] = [fault]
        _, row = await execute(services, source, pool=faulty)
        left = CommitFaults.armed + CommitFaults.fail_check
    finally:
        CommitFaults.armed.clear()
        CommitFaults.fail_check.clear()
        await faulty.close()
    assert not left, "the fault was not hit"
    logs = await services.pool.fetchval("SELECT count(*) FROM run_logs WHERE run_id = $1 AND event = 'probe_batch'",
                                        row["id"])
    assert (row["api_calls"], row["ingress_bytes"], logs) == (made["calls"], made["bytes"], made["logs"]), row
    reasons = (row["progress"] or {}).get("dead_letter_reasons") or []
    rejects = [e for e in reasons if e.startswith("reject")]
    assert len(rejects) == len(set(rejects)) == row["dead_letters"], reasons
    assert not [e for e in row["errors"] if e.startswith("reject")], "dead-letter reasons are not errors"
    if fault == "drop":  # the batch landed and the run went on
        assert (row["status"], row["records"], made["calls"]) == ("succeeded", 3, 6), row


async def test_record_with_a_lone_surrogate_in_a_json_column_is_a_dead_letter(db: asyncpg.Pool) -> None:
    """Issue 14, defect 9 (what the escaping must not change): records are never rewritten to fit. A record
    whose jsonb value holds a lone surrogate is refused by PostgreSQL and kept as a dead letter; the other
    records of its batch are written."""
    from batcher import sinks

    records = [("s", 1, "ok", 1, {"label": "fine"}), ("s", 2, "bad", 2, {"label": "x\ud800"})]
    async with db.acquire() as conn, conn.transaction():
        result = await sinks.write_batch(conn, STREAM, Batch(stream=STREAM.name, records=records),
                                         job_name=JOB, run_id=None)
    assert (result.written, result.dead_lettered) == (1, 1), result
    assert await db.fetchval("SELECT seq FROM synthetic_records") == 1
