"""The handler class: chunks in, results and context out, resumable.

Individual types send one request per unit (user or item) with per-item retries, ``concurrency``
requests in flight; each chunk's result rows are one batch (committed with the run-scoped checkpoint and
the context merged into the run's ``result``), followed by the chunk's ``batch_contexts`` row. Batch
types send one request for the whole set (preference batch types: one per distinct template), COMBINED
one request over all of its categories; their result rows (one per recipient) come in one batch at the end.

Results are keyed by the chain's root run id, so a run resumed after ``kill -9`` or a shutdown (a retry
of the same chain) first reads which items already succeeded and never sends them again; failed and
unsent items are sent (again).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from batcher import Batch, DerivedJob, Handler, RunContext, Stream
from handlers.agent_batch.cache import data_versions
from handlers.agent_batch.params import AgentParams, BatchType
from handlers.agent_batch.process import Outcome, Sender, lookahead, pipelined
from handlers.agent_batch.report import Report
from handlers.agent_batch.schedules import derive_group_jobs
from handlers.agent_batch.source import Chunk, Member, Source, Unit
from handlers.agent_batch.sql import Q
from handlers.agent_batch.status import STATUS_ROUTES

RESULTS = "batch_results"
CONTEXTS = "batch_contexts"
Row = tuple[Any, ...]


class AgentBatchHandler(Handler):
    """Processes users or category items through the processing service."""

    type = "agent_batch"
    display_name = "Agent batch processor"
    Params = AgentParams
    streams = (
        Stream(name=RESULTS, table="batch_results", key_columns=("run_id", "tenant_id", "user_id", "item_key"),
               value_columns=("status", "output", "error", "attempts"), conflict="update", scope="run",
               bookkeeping_columns=("written_at",), json_columns=("output",)),
        Stream(name=CONTEXTS, table="batch_contexts", key_columns=("run_id", "tenant_id"),
               value_columns=("context",), conflict="update", scope="run", bookkeeping_columns=("written_at",),
               json_columns=("context",)),
    )
    default_interval_minutes = 60
    api_routes = STATUS_ROUTES  # GET /api/agent/status

    @classmethod
    async def derive_jobs(cls, postgres: Any, parent: str,
                          params: Mapping[str, Any]) -> Sequence[DerivedJob] | None:
        return await derive_group_jobs(postgres, params)

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        p: AgentParams = params
        reader = ctx.postgres
        source = Source(reader, p, await data_versions(reader))
        done = {r["item_key"] for r in await reader.fetch(Q["succeeded_keys"], ctx.root_run_id)}
        report = Report(p, ctx.root_run_id, await source.total())
        if p.distribution:
            report.add_distribution(*await source.validate([Member(u, p.tenant_id) for u in p.distribution]))
        ctx.log.info("agent_batch_started", batch_type=p.batch_type.value, group=p.group and p.group.model_dump(),
                     already_succeeded=len(done))
        sender = Sender(ctx, p)
        flow = self._individual if p.batch_type.individual else self._batched
        async for batch in flow(ctx, p, source, sender, report, done):
            yield batch

    async def _individual(self, ctx: RunContext, p: AgentParams, source: Source, sender: Sender,
                          report: Report, done: set[str]) -> AsyncIterator[Batch]:
        slots = asyncio.Semaphore(p.concurrency)

        async def one(unit: Unit) -> Outcome | None:
            if unit.key in done:
                return None
            async with slots:
                return await sender.send(unit.template, unit.input, unit.user_id, unit.tenant_id)

        async def work(chunk: Chunk) -> list[Outcome | None]:
            try:
                async with asyncio.TaskGroup() as tasks:
                    started = [tasks.create_task(one(u)) for u in chunk.units]
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None
            return [t.result() for t in started]

        chunks = 0
        async for chunk, outcomes in pipelined(source.chunks(), work, lookahead(p.concurrency, p.chunk_size)):
            report.add_chunk(chunk)
            records = []
            for unit, outcome in zip(chunk.units, outcomes, strict=True):
                report.add_outcome(outcome.status if outcome else "succeeded")
                if outcome is not None:
                    records.append(_row(ctx, unit.tenant_id, unit.user_id, unit.key, outcome))
            chunks += 1
            for batch in _commit(ctx, p, report, records, chunk.candidates, chunks):
                yield batch
        if chunks == 0:
            for batch in _commit(ctx, p, report, [], 0, 0):
                yield batch

    async def _batched(self, ctx: RunContext, p: AgentParams, source: Source, sender: Sender,
                       report: Report, done: set[str]) -> AsyncIterator[Batch]:
        by_template: dict[str, list[Unit]] = {}
        checked = 0
        async for chunk in source.chunks():
            report.add_chunk(chunk)
            checked += chunk.candidates
            for unit in chunk.units:
                by_template.setdefault(unit.template, []).append(unit)
        base = "combined" if p.batch_type is BatchType.COMBINED else "batch"
        records: list[Row] = []
        for template, units in by_template.items():
            key = f"{base}:{template}" if p.batch_type.preference else base
            if key in done:
                report.add_outcome("succeeded", len(units))
                continue
            item_input: dict[str, Any] = {"key": key, "items": [u.input for u in units]}
            if p.batch_type is BatchType.COMBINED:
                item_input["categories"] = list(p.categories)
            outcome = await sender.send(template, item_input)
            report.add_outcome(outcome.status, len(units))
            owners = [(u.tenant_id, u.user_id) for u in units if u.user_id]
            records += [_row(ctx, t, u, key, outcome) for t, u in report.recipients(owners)]
        for batch in _commit(ctx, p, report, records, checked, 1):
            yield batch


def _row(ctx: RunContext, tenant_id: str, user_id: str, key: str, outcome: Outcome) -> Row:
    return (ctx.root_run_id, tenant_id, user_id, key, outcome.status, outcome.output, outcome.error,
            outcome.attempts)


def _commit(ctx: RunContext, p: AgentParams, report: Report, records: list[Row], checked: int,
            chunks: int) -> list[Batch]:
    """A chunk's result rows with the context (run result and checkpoint), then its context row."""
    ctx.report_progress(done=report.processed, total=report.total)
    context = report.context()
    return [Batch(stream=RESULTS, records=records, checkpoint={"chunks": chunks, **context["progress"]},
                  items_checked=checked, run_result={"context": context}, size_bytes=256 * len(records)),
            Batch(stream=CONTEXTS, records=[(ctx.root_run_id, p.context_tenant, context)])]
