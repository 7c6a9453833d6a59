"""The sinks: where a batch's records go, one module per store, chosen by the stream's effective sink.

- :mod:`batcher.sinks.postgres` — PostgreSQL tables (asyncpg), and the dead letters of every sink;
- :mod:`batcher.sinks.mongo` — MongoDB collections (pymongo, the only module importing it).

:func:`write_batch` is what the runner calls inside its batch transaction (fence → write → checkpoint and
counters): the one batch-write sequence of every sink (handler rejects → dead letters, ``replace_scope``,
duplicate keys dropped, the rows written, the rows the store rejects → dead letters); each sink supplies
only its store's two steps (:class:`SinkStore`: delete a scope, write rows with unique keys). A stream's
effective sink is its job's ``sink`` when the job sets one (``SinkRoute.job_sink``), else the stream's own
``Stream.sink``. Dead letters always go to PostgreSQL, in the same transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from batcher.errors import ConfigError, PermanentError
from batcher.handler import Batch, Rejected, Stream
from batcher.sinks.postgres import (
    MAX_REASONS,
    UPSERT_FIRST_BATCHES,
    Column,
    PgConnection,
    Row,
    RowsOutcome,
    WriteResult,
    _upsert_first,
    clean_text,
    column_types,
    dedupe_by_key,
    delete_scope,
    encode_payload,
    record_object,
    reset_caches,
    write_dead_letters,
    write_records,
)

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
    "SinkStore",
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


class RowsWritten(Protocol):
    """What a store did with rows of unique keys: how many it inserted or changed, and the ones it
    rejected for their data as (index into the rows given, reason)."""

    @property
    def written(self) -> int: ...

    @property
    def poisoned(self) -> list[tuple[int, str]]: ...


@dataclass(frozen=True)
class SinkStore:
    """One sink's part of a batch write, bound to its connection: delete the stream's records matching a
    scope of key-column values; write rows with unique keys under the stream's conflict policy, keeping
    going past the rows the store rejects for their data."""

    delete_scope: Callable[[Stream, Mapping[str, Any]], Awaitable[object]]
    write_rows: Callable[[Stream, Sequence[Row]], Awaitable[RowsWritten]]


def _store_of(conn: PgConnection, stream: Stream, route: SinkRoute, job_name: str) -> SinkStore:
    if _check_sink(stream, route, job_name) == "postgres":
        return SinkStore(functools.partial(delete_scope, conn), functools.partial(write_records, conn))
    from batcher.sinks import mongo  # pymongo is imported only where MongoDB is used

    assert route.mongo is not None
    return SinkStore(functools.partial(mongo.delete_scope, route.mongo),
                     functools.partial(mongo.write_documents, route.mongo))


async def write_batch(conn: PgConnection, stream: Stream, batch: Batch, *, job_name: str, run_id: int,
                      route: SinkRoute | None = None) -> WriteResult:
    """Write one batch inside the caller's open PostgreSQL transaction (fenced before, checkpointed after),
    to the stream's effective sink.

    Dead-letters ``batch.rejected`` (origin ``handler``), deletes ``batch.replace_scope``'s records, drops
    duplicate keys (last wins), writes the rows with the stream's conflict policy and dead-letters the rows
    the store rejects for their data (origin ``database``). Dead letters go to PostgreSQL whatever the sink.
    """
    store = _store_of(conn, stream, route or SinkRoute(), job_name)
    reasons: list[str] = []
    dead = 0
    if batch.rejected:
        dead += await write_dead_letters(conn, job_name=job_name, run_id=run_id, stream=stream.name,
                                         items=batch.rejected, origin="handler")
        _collect_reasons(reasons, (r.reason for r in batch.rejected))
    if batch.replace_scope:
        await store.delete_scope(stream, batch.replace_scope)
    rows = dedupe_by_key(stream, batch.records)
    outcome: RowsWritten = await store.write_rows(stream, rows) if rows else RowsOutcome()
    if outcome.poisoned:
        items = [Rejected(raw=record_object(stream, rows[i]), reason=why) for i, why in outcome.poisoned]
        dead += await write_dead_letters(conn, job_name=job_name, run_id=run_id, stream=stream.name,
                                         items=items, origin="database")
        _collect_reasons(reasons, (r.reason for r in items))
    return WriteResult(written=outcome.written, dead_lettered=dead, reasons=reasons,
                       database_rejected=len(outcome.poisoned))


def _collect_reasons(reasons: list[str], new: Iterable[str]) -> None:
    """Add up to ``MAX_REASONS`` distinct (cleaned) reasons."""
    for reason in new:
        if len(reasons) >= MAX_REASONS:
            return
        reason = clean_text(reason)
        if reason not in reasons:
            reasons.append(reason)
