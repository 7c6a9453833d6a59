"""The database side of one run: fenced batch commits, checkpoints, counters, final status and retry.

Every write transaction begins with the ``fence`` statement (DESIGN §5): no row back means this worker
lost the run, and :class:`LeaseLostError` stops it before anything is written. A batch's last statement
renews the lease from the clock, so a batch longer than the lease never commits an expired one.

Exactly-once accounting: counters and log entries are consumed only once the transaction that wrote them
committed. Each batch also sets the run's ``commit_seq``; when its ``COMMIT`` fails ambiguously (connection
lost or task cancelled while it was in flight) a fresh connection tells whether it landed, and failing that
the next fence does — the batch's counters are then consumed, never written twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog

from batcher.context import RunState
from batcher.dependencies import on_upstream_failure, on_upstream_success
from batcher.errors import LeaseLostError, RunCancelledError
from batcher.handler import Batch, Handler, Stream
from batcher.jsoncodec import storable, storable_text
from batcher.models import RunOutcome
from batcher.sinks import SinkRoute, WriteResult, write_batch
from batcher.store import DB_ERRORS, Q

if TYPE_CHECKING:
    import asyncpg

    from batcher.store import Conn

log = structlog.get_logger("batcher.runs")
MAX_ERRORS = 20
#: How long the check after an ambiguous COMMIT may wait (for the transaction in doubt to end, included).
DOUBT_CHECK_SECONDS = 10.0
#: A batch whose COMMIT is in doubt: (its commit sequence, the counters and logs it wrote, its errors).
InDoubt = tuple[int, tuple[int, int, int], list[str]]


def scope_key(stream: Stream, root_run_id: int, backfill: bool = False) -> str:
    """'' for job-scoped streams; the root run id for run-scoped ones — and for every stream of a backfill
    chain, so a backfill window never moves the job's incremental cursor."""
    return "" if stream.scope == "job" and not backfill else str(root_run_id)


class RunWriter:
    """Writes for one claimed run, always behind the fence of its claim token."""

    def __init__(self, pool: asyncpg.Pool, run: Mapping[str, Any], lease_seconds: float,
                 state: RunState) -> None:
        self._pool = pool
        self._run = run
        self._id = int(run["id"])
        self._token = run["claim_token"]
        self._lease = lease_seconds
        self.lease_seconds = lease_seconds
        self._state = state
        self._errors: list[str] = []
        self._root = int(run["root_run_id"] or run["id"])
        self._backfill = run.get("root_trigger") == "backfill"
        self.announce: Callable[[dict[str, Any]], None] | None = None  # called in the final transaction
        self.announced = False
        self._seq = int(run.get("commit_seq") or 0)  # the run's last committed batch
        self._in_doubt: InDoubt | None = None
        self._logs_consumed = 0  # log entries committed so far: positions in the buffer move by this
        self.route = SinkRoute()  # where the streams go: set by the runner from the job's sink

    async def job_config(self) -> Mapping[str, Any]:
        row = await self._pool.fetchrow(Q["get_job"], self._run["job_name"])
        if row is None:
            raise LeaseLostError(f"job {self._run['job_name']!r} no longer exists")
        return dict(row)

    async def load_checkpoints(self, handler: type[Handler]) -> dict[str, Any]:
        rows = await self._pool.fetch(Q["get_checkpoints"], self._run["job_name"], ["", str(self._root)])
        wanted = {s.name: scope_key(s, self._root, self._backfill) for s in handler.streams}
        return {r["stream"]: r["cursor"] for r in rows if wanted.get(r["stream"]) == r["scope_key"]}

    async def _fence(self, conn: Conn, *, final: bool = False) -> None:
        row = await conn.fetchrow(Q["fence"], self._id, self._token, self._lease)
        if row is None:
            raise LeaseLostError(f"run {self._id} is no longer ours")
        self._settle(int(row["commit_seq"]))
        if row["cancel_requested"] and not final:
            self._state.request_cancel(row["cancel_requested"])
            raise RunCancelledError(row["cancel_requested"])

    async def commit_batch(self, stream: Stream, batch: Batch, root_run_id: int) -> WriteResult:
        """Fence → rows and dead letters → checkpoint → logs → counters, in one transaction.

        An exception from the ``COMMIT`` itself leaves the batch in doubt: :meth:`_resolve_doubt` asks a
        fresh connection whether it landed. A batch that landed is consumed (and the run goes on, unless the
        task was cancelled); otherwise the exception propagates with nothing consumed.
        """
        seq = 0
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn)
                seq = self._seq + 1
                result = await write_batch(conn, stream, batch, job_name=self._run["job_name"], run_id=self._id,
                                           route=self.route)
                if batch.moves_checkpoint:
                    await conn.execute(Q["upsert_checkpoint"], self._run["job_name"], stream.name,
                                       scope_key(stream, root_run_id, self._backfill), batch.checkpoint, self._id)
                if batch.run_result:
                    await conn.execute(Q["merge_run_result"], self._id, dict(batch.run_result))
                new_errors = self._dead_letter_reasons(result.reasons)
                pending = self._state.pending()
                progress = self._progress(batch, len(batch.records))
                await self._write_logs(conn, self._state.logs[:pending[2]])
                updated = batch.items_updated + (result.written if stream.count_written_as_updated else 0)
                await conn.execute(Q["add_run_counters"], self._id, len(batch.records) - result.database_rejected,
                                   result.dead_lettered, batch.items_checked, updated, pending[0],
                                   pending[1], progress, new_errors or None, seq, self._lease)
                self._in_doubt = (seq, pending, new_errors)  # from here on, only the COMMIT can fail
        except BaseException as exc:
            if self._in_doubt is None or self._in_doubt[0] != seq or not await self._resolve_doubt(exc) \
                    or not isinstance(exc, Exception):
                raise
            return result
        self._settle(seq)
        return result

    @asynccontextmanager
    async def fenced_transaction(self, *, final: bool = False) -> AsyncIterator[Conn]:
        """A transaction behind this run's fence for writers other than batches (dead-letter replay)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._fence(conn, final=final)
            yield conn

    def _settle(self, committed_seq: int) -> None:
        """The run's committed sequence is ``committed_seq``: consume a batch in doubt if it is among them."""
        if self._in_doubt is not None:
            seq, pending, errors = self._in_doubt
            self._in_doubt = None
            if committed_seq >= seq:
                self._committed(pending, errors)
        self._seq = committed_seq

    async def _resolve_doubt(self, exc: BaseException) -> bool:
        """After an ambiguous COMMIT: whether the batch landed (settled either way), asked on a fresh
        connection; False when that cannot be told now (the next fence settles it)."""
        assert self._in_doubt is not None
        seq = self._in_doubt[0]
        try:
            committed = int(await asyncio.wait_for(self._pool.fetchval(Q["run_commit_seq"], self._id),
                                                   DOUBT_CHECK_SECONDS) or 0)
        except DB_ERRORS as check:  # TimeoutError among them
            log.warning("batch_commit_in_doubt", run_id=self._id, seq=seq, error=type(exc).__name__,
                        check_error=type(check).__name__)
            return False
        self._settle(committed)
        log.warning("batch_commit_in_doubt", run_id=self._id, seq=seq, error=type(exc).__name__,
                    landed=committed >= seq)
        return committed >= seq

    def _committed(self, pending: tuple[int, int, int], errors: list[str]) -> None:
        """A transaction that wrote ``pending`` counters and logs and these errors has committed."""
        self._state.committed(pending)
        self._logs_consumed += pending[2]
        self._errors.extend(errors)

    def _progress(self, batch: Batch, n: int) -> dict[str, Any] | None:
        progress = dict(self._state.progress or {})
        progress["records"] = int(progress.get("records", 0)) + n
        if batch.progress_total is not None:
            progress["total"] = batch.progress_total
        self._state.progress = progress
        return progress

    def _dead_letter_reasons(self, reasons: list[str]) -> list[str]:
        """Dead-letter reasons are not errors (issue 15): they go to the run's progress as
        ``dead_letter_reasons`` (distinct, at most MAX_ERRORS, committed with the batch); no error."""
        if reasons:
            progress = dict(self._state.progress or {})
            clean = [storable_text(r) for r in reasons]
            known = list(progress.get("dead_letter_reasons") or [])
            progress["dead_letter_reasons"] = list(dict.fromkeys([*known, *clean]))[:MAX_ERRORS]
            self._state.progress = progress
        return []

    def _new_errors(self, reasons: list[str]) -> list[str]:
        """The reasons not recorded yet, within the run's cap (NUL and lone surrogates escaped)."""
        room = MAX_ERRORS - len(self._errors)
        clean = [storable_text(r) for r in reasons]
        return list(dict.fromkeys(r for r in clean if r not in self._errors))[: max(room, 0)]

    async def _write_logs(self, conn: Conn, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
        if entries:
            await conn.execute(Q["insert_run_logs"], self._id, [storable_text(e[0]) for e in entries],
                               [storable_text(e[1]) for e in entries], [storable(e[2]) for e in entries])

    async def finish(self, outcome: RunOutcome) -> Mapping[str, Any]:
        """Record the final status (and success effects or the retry row) behind the fence.

        Counters, errors and log entries are only consumed once the transaction committed, so a finish
        retried after a failed commit (database restart, deadlock) loses none of them. ``announce`` (the
        runner's ``run_finished`` log) runs inside the transaction, so that entry is committed with it.
        """
        if outcome.status == "lost":
            return dict(await self._pool.fetchrow(Q["get_run"], self._id) or self._run)
        logs_before = len(self._state.logs) + self._logs_consumed  # the fence may settle a batch in doubt
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute(Q["lock_job_family"], self._run["job_name"])  # job rows first
                    await self._fence(conn, final=True)
                    await self._honour_cancel_request(conn, outcome)
                    row, errors, pending = await self._record_final(conn, outcome)
                self._state.final_committed = True  # before the connection's release (another round trip)
        except LeaseLostError:
            del self._state.logs[logs_before - self._logs_consumed:]
            outcome.status, outcome.reason = "lost", "lease_lost"
            return dict(await self._pool.fetchrow(Q["get_run"], self._id) or self._run)
        except BaseException:  # the announcement is made again by the retried finish
            del self._state.logs[logs_before - self._logs_consumed:]
            raise
        self._committed(pending, errors)
        self.announced = True
        return row

    async def _honour_cancel_request(self, conn: Conn, outcome: RunOutcome) -> None:
        """A cancel requested for this run ends its chain: an outcome that would go on (a retry, or a
        shutdown a later run-job resumes) becomes ``cancelled`` with the request's reason, without retry."""
        requested = await conn.fetchval(Q["cancel_request_of_run"], self._id)
        resumable = outcome.status == "cancelled" and outcome.reason == "shutdown"
        if not requested or not (outcome.retry or resumable):
            return
        stopped = f"run stopped: {requested}"
        outcome.errors = [stopped] if outcome.status == "cancelled" else [*outcome.errors, stopped]
        outcome.status, outcome.reason, outcome.retry = "cancelled", str(requested), False

    async def _record_final(self, conn: Conn, outcome: RunOutcome,
                            ) -> tuple[dict[str, Any], list[str], tuple[int, int, int]]:
        errors = self._new_errors(outcome.errors)
        dropped = {"logs_dropped": max(self._state.logs_total - len(self._state.logs), 0)} \
            if self._state.logs_total > 1000 else {}
        merged = {**self._state.result, **dropped}  # the handler's report_result, if any
        result = merged if merged else None
        row = await conn.fetchrow(Q["finish_run"], self._id, outcome.status, outcome.reason, errors or None,
                                  result, *self._state.pending()[:2])
        job = self._run["job_name"]
        if outcome.status == "succeeded":
            await conn.execute(Q["mark_success"], job)
            await conn.execute(Q["delete_run_checkpoints"], job, str(self._root))
            await on_upstream_success(conn, job)
        elif not outcome.retry:
            await on_upstream_failure(conn, job, self._id, outcome.reason)
            await self._drop_ended_chain_checkpoints(conn, outcome)
        if outcome.retry:
            await self.queue_retry(conn, self._run, delay=outcome.retry_delay,
                                   attempt=int(self._run["attempt"]) + (0 if outcome.status == "cancelled" else 1))
        final = dict(row) if row else dict(self._run)
        if self.announce is not None:
            self.announce(self.summary(final, outcome))
        pending = self._state.pending()  # after the announcement, which is one of the entries
        await self._write_logs(conn, self._state.logs)
        return final, errors, pending

    async def _drop_ended_chain_checkpoints(self, conn: Conn, outcome: RunOutcome) -> None:
        """A chain that ended for good (failed or cancelled, no retry queued) never resumes: its run-scoped
        checkpoints go with it. A ``run-job`` chain stopped by a shutdown stays: the next run-job resumes it."""
        if outcome.reason == "shutdown" and self._run.get("root_trigger") == "cli":
            return
        await conn.execute(Q["delete_run_checkpoints"], self._run["job_name"], str(self._root))

    @staticmethod
    async def queue_retry(conn: Conn, run: Mapping[str, Any], *, delay: float, attempt: int,
                          abandons: int | None = None) -> int:
        """A retry is a new row: same root (so the same run-scoped checkpoints), retry_of the old one."""
        root = int(run["root_run_id"] or run["id"])
        run_id: int = await conn.fetchval(
            Q["insert_queued_run"], run["job_name"], run["job_type"], "retry", run["priority"], run["params"],
            delay, run["id"], root, attempt, run["abandons"] if abandons is None else abandons,
            run["root_trigger"])
        return run_id

    def summary(self, row: Mapping[str, Any], outcome: RunOutcome) -> dict[str, Any]:
        errors = row.get("errors") or []
        return {"run_id": self._id, "job": self._run["job_name"], "status": row.get("status", outcome.status),
                "reason": row.get("reason", outcome.reason), "attempt": self._run["attempt"],
                "records": int(row.get("records") or 0), "dead_letters": int(row.get("dead_letters") or 0),
                "api_calls": int(row.get("api_calls") or 0), "ingress_bytes": int(row.get("ingress_bytes") or 0),
                "runtime_ms": int(row.get("runtime_ms") or 0), "errors": [str(e) for e in errors][:MAX_ERRORS],
                "dead_letter_reasons": list((self._state.progress or {}).get("dead_letter_reasons") or []),
                "retry_queued": outcome.retry}

