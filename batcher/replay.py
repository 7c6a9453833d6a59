"""``batcher dead-letters replay JOB`` as a run of the job (issue 14, defect 12).

A replay writes rows into the job's tables, so it takes the job's run slot like ``run-job`` does: it
creates and claims a ``cli`` run of the job (params ``{"replay": "dead-letters"}``) through
:func:`batcher.runjob.claim_foreground_run` — waiting while a live run holds the job, or refusing with
:class:`batcher.runjob.JobBusy` — and writes every page behind that run's fence, resolving the dead
letters in the same transactions. No daemon claims the job meanwhile, and a replay that lost its run
(lease, cancel) stops before writing more. The run ends ``succeeded``/``replay`` with the replay's
figures as its result; it neither marks the job's success nor queues its dependents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import structlog

from batcher import deadletters
from batcher.context import RunState
from batcher.errors import LeaseLostError, RunCancelledError
from batcher.handler import Stream
from batcher.models import Services
from batcher.runjob import claim_foreground_run
from batcher.runs import RunWriter
from batcher.store import Q
from batcher.worker import Worker

log = structlog.get_logger("batcher.replay")
REPLAY_PARAMS = {"replay": "dead-letters"}


class _ReplayOwner:
    """The worker's owner during a replay: renews the replay run's lease, records its cancel request."""

    def __init__(self, run_id: int, state: RunState) -> None:
        self.run_id = run_id
        self.state = state

    def wakeup(self) -> None:
        pass

    def cancel_run(self, run_id: int, reason: str) -> None:
        if run_id == self.run_id:
            self.state.request_cancel(reason)

    def fence_all(self) -> None:
        self.state.request_cancel("lease_lost")

    def active_runs(self) -> list[int]:
        return [] if self.state.final_committed else [self.run_id]


async def replay_as_run(services: Services, job_name: str, streams: Mapping[str, Stream], *,
                        wait: bool) -> dict[str, Any]:
    """Replay ``job_name``'s dead letters through a run of the job; returns the figures and the run id."""
    lease = services.settings.daemon.lease_seconds
    worker = Worker(services.database_url, services.pool, lease_seconds=lease, queues=None, kind="run-job")
    await worker.start()
    try:
        run = await claim_foreground_run(services, worker, job_name, REPLAY_PARAMS, wait=wait)
        state = RunState()
        worker.owner = _ReplayOwner(int(run["id"]), state)
        writer = RunWriter(services.pool, run, lease, state)
        sink = (await writer.job_config()).get("sink")  # the job's sink overrides its streams' own
        streams = {n: dataclasses.replace(s, sink=sink) if sink else s for n, s in streams.items()}
        log.info("replay_started", job=job_name, run_id=run["id"])
        try:
            result = await deadletters.replay_dead_letters(services.pool, job_name, streams, int(run["id"]),
                                                           writer.fenced_transaction)
        except RunCancelledError as exc:
            await _end(writer, run, "cancelled", exc.reason, [f"run stopped: {exc.reason}"], None)
            raise
        except LeaseLostError:
            raise
        except Exception as exc:
            await _end(writer, run, "failed", "permanent_error", [f"{type(exc).__name__}: {exc}"], None)
            raise
        figures = dataclasses.asdict(result)
        await _end(writer, run, "succeeded", "replay", [], figures)
        return {"run_id": run["id"], **figures}
    finally:
        await worker.stop()


async def _end(writer: RunWriter, run: Mapping[str, Any], status: str, reason: str | None,
               errors: list[str], result: dict[str, Any] | None) -> None:
    """The replay run's final status, behind its fence; no success effects (it is not a run of the
    handler), and a failure records nothing for dependents either."""
    async with writer.fenced_transaction(final=True) as conn:
        await conn.fetchrow(Q["finish_run"], run["id"], status, reason, errors or None, result, 0, 0)
    log.info("replay_finished", job=run["job_name"], run_id=run["id"], status=status, reason=reason)
