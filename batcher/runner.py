"""Runs one claimed run: params → handler → fenced batch commits → final status, retry, run logs.

Every transaction that writes for a run starts with the ``fence`` statement: it renews the lease and
returns the cancel request; zero rows means another worker owns the run now, so this one commits nothing
more. A batch commits its rows, dead letters, checkpoint (in its stream's scope) and counters together.

Failure policy: ``PermanentError`` fails at once; ``TransientError`` and unexpected exceptions retry with
exponential backoff and full jitter while ``attempt <= max_retries``; ``timeout_seconds`` ends the run
``failed``/``timeout`` without retry; a cancel request ends it ``cancelled``; a shutdown ends it
``cancelled``/``shutdown`` with an immediate retry (daemon runs only, never a ``run-job`` chain).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from batcher.context import Context, RunState
from batcher.environ import resolve_params
from batcher.errors import LeaseLostError, PermanentError, RunCancelledError
from batcher.handler import Batch, Handler
from batcher.jsoncodec import storable_text
from batcher.logs import RUN_LOG_SINK, bind_run_context, redact
from batcher.models import RunOutcome, Services
from batcher.pipeline import prefetching
from batcher.runs import RunWriter
from batcher.sinks import SinkRoute, require_sinks
from batcher.store import DB_ERRORS, DB_UNAVAILABLE

log = structlog.get_logger("batcher.runner")
SHIELD_FINISH_TIMEOUT = 30.0
MAX_NOTE_CHARS = 500
#: A final-status transaction the database rolled back to break a deadlock or a serialization conflict
#: (e.g. against a concurrent claim holding the job's row) is retried like an outage: it is fenced.
RETRY_SQLSTATES = ("40P01", "40001")


def retry_delay(base: float, attempt: int) -> float:
    """Exponential backoff with full jitter: uniform(0, base × 2^(attempt-1)), capped at one day."""
    return random.uniform(0, min(base * 2 ** max(attempt - 1, 0), 86_400.0))


class RunExecution:
    """One run of one job on this worker. ``await execute()`` returns the final summary."""

    def __init__(self, services: Services, run: Mapping[str, Any], *, lease_seconds: float,
                 literal_secrets: Mapping[str, str] | None = None, queue_retries: bool = True) -> None:
        self.services = services
        self.run = dict(run)
        self.state = RunState()
        self.writer = RunWriter(services.pool, self.run, lease_seconds, self.state)
        self.writer.announce = self._announce
        self._literal_secrets = literal_secrets
        self._queue_retries = queue_retries and self.run.get("root_trigger") != "cli"

    def request_cancel(self, reason: str) -> None:
        self.state.request_cancel(reason)

    async def execute(self) -> dict[str, Any]:
        token = RUN_LOG_SINK.set(self.state.log_entry)
        try:
            with bind_run_context(self.run["id"], self.run["job_name"], self.run["attempt"]):
                log.info("run_started", trigger=self.run["trigger"], queued_at=str(self.run["queued_at"]))
                outcome = await self._outcome()
                return await self._finish(outcome)
        finally:
            RUN_LOG_SINK.reset(token)

    async def _outcome(self) -> RunOutcome:
        try:
            job = await self.writer.job_config()
        except LeaseLostError as exc:  # the job was deleted under its run
            return RunOutcome("failed", "permanent_error", [str(exc)])
        except DB_UNAVAILABLE as exc:
            return RunOutcome("failed", "transient_error", [f"{type(exc).__name__}: {exc}"],
                              retry=self._queue_retries, retry_delay=1.0)
        try:
            async with asyncio.timeout(float(job["timeout_seconds"])) as deadline:
                await self._iterate(job)
            return RunOutcome("succeeded")
        except TimeoutError:
            if deadline.expired():
                return RunOutcome("failed", "timeout", [f"timed out after {job['timeout_seconds']} s"])
            return self._failure(job, TimeoutError("operation timed out"))
        except RunCancelledError as exc:
            return self._cancelled(exc.reason)
        except LeaseLostError:
            return RunOutcome("lost", "lease_lost")
        except asyncio.CancelledError:
            return self._cancelled(self.state.cancel_reason or "shutdown")
        except Exception as exc:  # noqa: BLE001 - every handler failure becomes a run outcome
            return self._failure(job, exc)

    def _cancelled(self, reason: str) -> RunOutcome:
        if reason == "lease_lost":
            return RunOutcome("lost", "lease_lost")
        retry = reason == "shutdown" and self._queue_retries
        return RunOutcome("cancelled", reason, [f"run stopped: {reason}"], retry=retry)

    def _failure(self, job: Mapping[str, Any], exc: BaseException) -> RunOutcome:
        message = redact(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
        if isinstance(exc, PermanentError):
            return RunOutcome("failed", "permanent_error", [message])
        can_retry = self._queue_retries and int(self.run["attempt"]) <= int(job["max_retries"])
        log.warning("run_attempt_failed", error=message, will_retry=can_retry)
        delay = retry_delay(float(job["retry_base_seconds"]), int(self.run["attempt"])) if can_retry else 0.0
        # retries_exhausted only where retries were tried: a chain that never retries (run-job) ends with
        # what happened, transient_error, and no retry queued
        exhausted = self._queue_retries and not can_retry
        return RunOutcome("failed", "retries_exhausted" if exhausted else "transient_error", [message],
                          retry=can_retry, retry_delay=delay)

    async def _iterate(self, job: Mapping[str, Any]) -> None:
        registry = self.services.registry
        if job["job_type"] not in registry:
            raise PermanentError(f"unknown job type {job['job_type']!r}")
        handler_cls = registry[job["job_type"]]
        self.writer.route = SinkRoute(job.get("sink"), self.services.mongo)
        require_sinks(handler_cls.streams, self.writer.route, str(job["job_name"]))
        params = resolve_params(handler_cls.Params, {**(job["params"] or {}), **(self.run["params"] or {})},
                                literal_secrets=self._literal_secrets)
        ctx = Context(self.services, self.run, self.state, await self.writer.load_checkpoints(handler_cls))
        daemon = self.services.settings.daemon
        depth = int(job["prefetch_batches"] or (daemon.prefetch_batches if handler_cls.prefetch_batches is None
                                                 else handler_cls.prefetch_batches))
        source: AsyncIterator[Batch] = handler_cls().run(ctx, params)
        async with prefetching(source, depth=depth, max_bytes=daemon.prefetch_bytes) as batches:
            while (batch := await self._next_batch(batches)) is not None:
                self._check_cancel()
                await self._commit(handler_cls, ctx, batch)
                self._check_cancel()

    async def _next_batch(self, batches: AsyncIterator[Batch]) -> Batch | None:
        """The next batch (None at the end); a cancel signal interrupts the wait for it (DESIGN §5: waits
        watch the signal), so a handler sleeping or blocked between batches stops at once."""
        waiter = asyncio.ensure_future(anext(batches, None))
        signal = asyncio.ensure_future(self.state.cancelled.wait())
        try:
            await asyncio.wait((waiter, signal), return_when=asyncio.FIRST_COMPLETED)
        finally:
            signal.cancel()
            if not waiter.done():
                waiter.cancel()
        if not waiter.done():  # the signal came first: the wait was cancelled above
            self._check_cancel()
        return waiter.result()

    def _check_cancel(self) -> None:
        if self.state.cancelled.is_set():
            raise RunCancelledError(self.state.cancel_reason or "cancelled")

    async def _commit(self, handler_cls: type[Handler], ctx: Context, batch: Batch) -> None:
        stream = handler_cls.stream(batch.stream)
        result = await self.writer.commit_batch(stream, batch, ctx.root_run_id)
        if batch.moves_checkpoint:
            ctx.remember_checkpoint(stream.name, batch.checkpoint)
        log.debug("batch_committed", stream=stream.name, records=len(batch.records),
                  written=result.written, dead_letters=result.dead_lettered)

    async def _finish(self, outcome: RunOutcome) -> dict[str, Any]:
        finishing = asyncio.ensure_future(self._finish_durably(outcome))
        try:
            row = await asyncio.shield(finishing)
        except asyncio.CancelledError:
            row = await asyncio.wait_for(finishing, SHIELD_FINISH_TIMEOUT)
        summary = self.writer.summary(row, outcome)
        if not self.writer.announced:  # the run was lost: nothing committed the announcement
            self._announce(summary)
        return summary

    @staticmethod
    def _announce(summary: dict[str, Any]) -> None:
        log.info("run_finished", **{k: v for k, v in summary.items() if k != "errors"},
                 errors=len(summary["errors"]))

    async def _finish_durably(self, outcome: RunOutcome) -> Mapping[str, Any]:
        """Record the final status, retrying while the database is unreachable (e.g. restarting) or after a
        deadlock for up to two leases; past that the run is left to the reaper, which recovers it like any
        lost run. Any other error (a value that cannot be encoded or stored) is not worth a retry as it
        was: the outcome is stored once more without the pending log entries, so the run still ends."""
        deadline = time.monotonic() + 2 * self.writer.lease_seconds
        delay = 0.2
        degraded = False
        while True:
            try:
                return await self.writer.finish(outcome)
            except Exception as exc:
                if not _retryable(exc):
                    if degraded:
                        raise
                    degraded = True
                    self._degrade(outcome, exc)
                    continue
                if time.monotonic() > deadline:
                    log.error("run_finish_failed", error=f"{type(exc).__name__}: {exc}")
                    outcome.status, outcome.reason = "lost", "database_unreachable"
                    return self.run
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _degrade(self, outcome: RunOutcome, exc: Exception) -> None:
        """Drop what the final transaction could not store (the pending log entries) and say so."""
        dropped = len(self.state.logs)
        self.state.logs.clear()
        note = storable_text(redact(f"the run's log entries could not be stored ({type(exc).__name__}: {exc}); "
                                    f"{dropped} dropped"))[:MAX_NOTE_CHARS]
        outcome.errors = [*outcome.errors, note]
        log.error("run_finish_degraded", error=note, dropped_logs=dropped)


def _retryable(exc: BaseException) -> bool:
    """An outage or a deadlock; never a value asyncpg could not encode (a ValueError, sent nowhere)."""
    if isinstance(exc, ValueError) or not isinstance(exc, DB_ERRORS):
        return False
    return isinstance(exc, DB_UNAVAILABLE) or getattr(exc, "sqlstate", None) in RETRY_SQLSTATES
