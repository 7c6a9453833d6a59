"""The ``synthetic`` handler: generated records that exercise every runtime feature.

Used by tests, benchmarks and the demo. Records go to ``synthetic_records`` keyed by
``(scope_key, seq)``: the scope key is the root run id for ``scope = "run"`` (bounded work, resumed by
retries, rewritten by the next chain) and the job name for ``scope = "job"`` (the cursor continues across
runs: each run appends ``records`` more). ``fail_at_batch`` fails the run when it reaches that batch
(1-based, counted from the first record of the run's range) while ``attempt <= fail_attempts``;
``poison_every`` puts a NUL byte (rejected by PostgreSQL) into every Nth record; ``reject_every`` makes the
handler itself reject every Nth record (a handler-side dead letter).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from typing import Any, Literal

from pydantic import Field, model_validator

from batcher import (
    Batch,
    ConflictPolicy,
    Handler,
    HandlerParams,
    PermanentError,
    Rejected,
    RunContext,
    Secret,
    Stream,
    TransientError,
)

_COLUMNS: dict[str, Any] = dict(table="synthetic_records", key_columns=("scope_key", "seq"),
                                value_columns=("value", "amount", "attrs"),
                                bookkeeping_columns=("ingested_at",), json_columns=("attrs",))


def _stream(scope: Literal["job", "run"], conflict: ConflictPolicy) -> Stream:
    return Stream(name=f"{scope}_{conflict}", scope=scope, conflict=conflict, **_COLUMNS)


_SCOPES: tuple[Literal["run", "job"], ...] = ("run", "job")
_CONFLICTS: tuple[ConflictPolicy, ...] = ("ignore", "update_if_changed", "update")


class SyntheticParams(HandlerParams):
    """The synthetic handler's params (listed with descriptions by ``batcher types``)."""

    records: int = Field(1000, ge=0, description="records per run (scope=job: appended per run)")
    batch_size: int = Field(100, ge=1, le=1_000_000, description="records per committed batch")
    delay_ms: int = Field(0, ge=0, description="sleep before each batch (simulates a slow source)")
    fail_at_batch: int | None = Field(None, ge=1, description="fail when reaching this batch (1-based)")
    fail_mode: Literal["transient", "permanent"] = Field("transient", description="the error fail_at_batch "
                                                         "raises: transient (retried) or permanent")
    fail_attempts: int = Field(1, ge=1, description="fail_at_batch fails while attempt <= this")
    scope: Literal["run", "job"] = Field("run", description="run: bounded work resumed by retries; job: a "
                                         "cursor continuing across runs")
    conflict: ConflictPolicy = Field("ignore", description="what a rewritten key does in the table")
    value_seed: int = Field(0, description="changes the generated values (to exercise updates)")
    poison_every: int | None = Field(None, ge=1, description="every Nth record holds a NUL byte (rejected by "
                                     "PostgreSQL: a dead letter)")
    reject_every: int | None = Field(None, ge=1, description="the handler rejects every Nth record itself")
    start: date | None = Field(None, description="window start (with end; set per day by backfill)")
    end: date | None = Field(None, description="window end, inclusive")
    token: Secret | None = Field(None, description="an unused secret (exercises secret handling)")

    @model_validator(mode="after")
    def _window(self) -> SyntheticParams:
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end go together")
        if self.start and self.end and self.end < self.start:
            raise ValueError("end is before start")
        return self


class SyntheticHandler(Handler):
    type = "synthetic"
    display_name = "Synthetic records"
    Params = SyntheticParams
    streams = tuple(_stream(s, c) for s in _SCOPES for c in _CONFLICTS)
    default_interval_minutes = 5
    accepts_windows = True

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        p: SyntheticParams = params
        stream = f"{p.scope}_{p.conflict}"
        scope_key = str(ctx.root_run_id) if p.scope == "run" else ctx.job_name
        cursor = ctx.checkpoint(stream) or {}
        first = int(cursor.get("run_first", 0)) if p.scope == "run" else int(cursor.get("next_seq", 0))
        begin = int(cursor.get("next_seq", 0))
        end = first + p.records if p.scope == "run" else begin + p.records
        if p.scope == "job" and cursor.get("run_root") == ctx.root_run_id:
            end = int(cursor["run_end"])  # a retry finishes its chain's range, no more
        ctx.report_progress(done=begin - first if p.scope == "run" else 0, total=p.records)
        seq = begin
        while seq < end:
            batch_no = (seq - (first if p.scope == "run" else begin)) // p.batch_size + 1
            if p.fail_at_batch is not None and batch_no >= p.fail_at_batch and ctx.attempt <= p.fail_attempts:
                err = TransientError if p.fail_mode == "transient" else PermanentError
                raise err(f"synthetic failure at batch {batch_no} ({p.fail_mode})")
            if p.delay_ms:
                await asyncio.sleep(p.delay_ms / 1000)
            upto = min(seq + p.batch_size, end)
            records, rejected = self._generate(p, scope_key, seq, upto)
            ctx.report_progress(done=upto - (first if p.scope == "run" else begin), total=p.records)
            checkpoint: dict[str, Any] = {"next_seq": upto, "run_first": first}
            if p.scope == "job":
                checkpoint.update(run_root=ctx.root_run_id, run_end=end)
            yield Batch(stream=stream, records=records, rejected=rejected, checkpoint=checkpoint,
                        items_checked=upto - seq, size_bytes=64 * (upto - seq))
            seq = upto

    @staticmethod
    def _generate(p: SyntheticParams, scope_key: str, lo: int, hi: int,
                  ) -> tuple[list[tuple[Any, ...]], list[Rejected]]:
        window = {"start": p.start.isoformat(), "end": p.end.isoformat()} if p.start and p.end else None
        records: list[tuple[Any, ...]] = []
        rejected: list[Rejected] = []
        for n in range(lo, hi):
            value = f"v{p.value_seed}-{n}"
            if p.poison_every and n % p.poison_every == p.poison_every - 1:
                value += "\x00poison"
            if p.reject_every and n % p.reject_every == p.reject_every - 1:
                rejected.append(Rejected(raw={"seq": n, "value": value}, reason="synthetic reject"))
                continue
            attrs = {"seed": p.value_seed, "n": n, "window": window}
            records.append((scope_key, n, value, n * (p.value_seed + 1), attrs))
        return records, rejected
