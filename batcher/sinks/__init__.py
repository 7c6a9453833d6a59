"""The sinks: where a batch's records go, one module per store, chosen by the stream's effective sink.

- :mod:`batcher.sinks.postgres` — PostgreSQL tables (asyncpg), and the dead letters of every sink;
- :mod:`batcher.sinks.mongo` — MongoDB collections (pymongo, the only module importing it).

:func:`write_batch` is what the runner calls inside its batch transaction (fence → write → checkpoint and
counters). A stream's effective sink is its job's ``sink`` when the job sets one (``SinkRoute.job_sink``),
else the stream's own ``Stream.sink``. Dead letters always go to PostgreSQL, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from batcher.errors import ConfigError, PermanentError
from batcher.handler import Batch, Rejected, Stream
from batcher.sinks.postgres import (
    MAX_REASONS,
    UPSERT_FIRST_BATCHES,
    Column,
    PgConnection,
    RowsOutcome,
    WriteResult,
    _collect_reasons,
    _upsert_first,
    clean_text,
    column_types,
    dedupe_by_key,
    encode_payload,
    record_object,
    reset_caches,
    write_dead_letters,
    write_records,
)
from batcher.sinks.postgres import write_batch as write_postgres_batch

if TYPE_CHECKING:
    from batcher.sinks.mongo import MongoConnection

__all__ = [
    "MAX_REASONS",
    "SINKS",
    "UPSERT_FIRST_BATCHES",
    "Column",
    "PgConnection",
    "RowsOutcome",
    "SinkName",
    "SinkRoute",
    "WriteResult",
    "_upsert_first",
    "clean_text",
    "column_types",
    "dedupe_by_key",
    "encode_payload",
    "record_object",
    "require_sinks",
    "reset_caches",
    "write_batch",
    "write_dead_letters",
    "write_records",
]

SinkName = Literal["postgres", "mongo"]
#: Every sink this batcher can write.
SINKS: tuple[SinkName, ...] = ("postgres", "mongo")


@dataclass(frozen=True)
class SinkRoute:
    """How one run's streams are written: the job's sink override (None: each stream's own) and the
    process's MongoDB connection (None: no MongoDB configured)."""

    job_sink: str | None = None
    mongo: MongoConnection | None = None

    def sink_of(self, stream: Stream) -> str:
        return self.job_sink or stream.sink


def require_sinks(streams: Sequence[Stream], route: SinkRoute, job_name: str) -> None:
    """Refuse a run (PermanentError, before the handler starts) whose streams need a sink that is unknown or
    not configured here."""
    for stream in streams:
        _check_sink(stream, route, job_name)


def _check_sink(stream: Stream, route: SinkRoute, job_name: str) -> str:
    sink = route.sink_of(stream)
    if sink not in SINKS:
        raise PermanentError(f"stream {stream.name!r} has unknown sink {sink!r} (known: {', '.join(SINKS)})")
    if sink == "mongo" and route.mongo is None:
        raise PermanentError(f"stream {stream.name!r} of job {job_name!r} goes to MongoDB, but no MongoDB "
                             f"is configured (set MONGODB_URI)")
    if sink == "mongo" and route.mongo is not None:
        try:
            route.mongo.database_name  # noqa: B018 - resolves (and checks) the database name
        except ConfigError as exc:
            raise PermanentError(f"stream {stream.name!r} of job {job_name!r}: {exc}") from None
    return sink


async def write_batch(conn: PgConnection, stream: Stream, batch: Batch, *, job_name: str, run_id: int,
                      route: SinkRoute | None = None) -> WriteResult:
    """Write one batch inside the caller's open PostgreSQL transaction, to the stream's effective sink.

    MongoDB: handler rejects become dead letters (PostgreSQL), duplicate keys are dropped (last wins), the
    documents are upserted, and the records MongoDB rejects become dead letters (origin ``database``).
    """
    route = route or SinkRoute()
    if _check_sink(stream, route, job_name) == "postgres":
        return await write_postgres_batch(conn, stream, batch, job_name=job_name, run_id=run_id)
    assert route.mongo is not None
    return await _write_mongo_batch(conn, route.mongo, stream, batch, job_name=job_name, run_id=run_id)


async def _write_mongo_batch(conn: PgConnection, mongo: MongoConnection, stream: Stream, batch: Batch, *,
                             job_name: str, run_id: int) -> WriteResult:
    from batcher.sinks.mongo import delete_scope, write_documents

    reasons: list[str] = []
    dead = 0
    if batch.rejected:
        dead += await write_dead_letters(conn, job_name=job_name, run_id=run_id, stream=stream.name,
                                         items=batch.rejected, origin="handler")
        _collect_reasons(reasons, (r.reason for r in batch.rejected))
    scope = getattr(batch, "replace_scope", None)  # Batch.replace_scope, where this batcher has it
    if scope:
        await delete_scope(mongo, stream, scope)
    rows = dedupe_by_key(stream, batch.records)
    outcome = await write_documents(mongo, stream, rows)
    if outcome.poisoned:
        items = [Rejected(raw=record_object(stream, rows[i]), reason=why) for i, why in outcome.poisoned]
        dead += await write_dead_letters(conn, job_name=job_name, run_id=run_id, stream=stream.name,
                                         items=items, origin="database")
        _collect_reasons(reasons, (r.reason for r in items))
    return WriteResult(written=outcome.written, dead_lettered=dead, reasons=reasons,
                       database_rejected=len(outcome.poisoned))
