"""The PostgreSQL sink: a batch's rows and dead letters, written inside the caller's transaction.

:func:`batcher.sinks.write_batch` runs the batch-write sequence every sink shares; this module supplies
its PostgreSQL steps (:func:`delete_scope`, :func:`write_records`) and the dead letters of every sink
(:func:`write_dead_letters`).

Owns asyncpg writes of handler data (with :mod:`batcher.store` and :mod:`batcher.worker`), the
idempotent ``dead_letters`` insert and the JSON payload encoding of dead letters. DESIGN §7:

- duplicate keys within a batch are dropped first (last wins): an upsert that meets one key twice fails;
- fast path: ``COPY`` straight into the target table inside a savepoint (a large batch is encoded in slices
  of :data:`COPY_SLICE` rows with the event loop free in between); on a key conflict the savepoint
  is rolled back and the rows are upserted with the stream's conflict policy: ``COPY`` into a reused
  session temp table, then ``INSERT … SELECT … ON CONFLICT`` (measured 15–30 % faster than ``INSERT …
  SELECT FROM unnest($1::type[], …)`` on 5,000-row batches; ``bench/sink.py`` prints both). After a
  conflict the next few writes to that table go straight to the upsert (a replay conflicts every batch);
  ``update_if_changed`` filters out unchanged rows before ``ON CONFLICT``, which would lock each one;
- a row the database rejects for its data (SQLSTATE classes 22 and 23, or a value asyncpg cannot
  encode) does not fail the batch: the batch is bisected in savepoints and each offending row becomes a
  dead letter (origin ``database``) carrying the database's message.

Bookkeeping columns (``ingested_at``…) are never sent: they MUST have ``DEFAULT now()`` so ``COPY`` and
the insert path fill them; the update policies set them to ``now()`` when (and only when) a row changes.
Value columns must have an equality operator (``jsonb``, not ``json``) for ``update_if_changed``.
Deferred constraints are checked at the caller's COMMIT, outside the savepoints: they cannot be isolated.

The SQL constants below (and those of :mod:`batcher.deadletters`) belong in ``queries.sql``; they live
here until they are moved there.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import hashlib
import json
import operator
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import asyncpg

from batcher.errors import PermanentError
from batcher.handler import Rejected, Stream
from batcher.jsoncodec import truncated
from batcher.store import Q

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

Row = tuple[Any, ...]
#: A dedicated connection or one acquired from the pool.
PgConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
DeadLetterOrigin = Literal["handler", "database"]
UpsertStrategy = Literal["unnest", "temp_table"]

MAX_REASONS = 5
MAX_REASON_CHARS = 2000
_DATA_ERROR_CLASSES = ("22", "23")
# asyncpg encodes COPY rows client-side: a value it cannot encode raises one of these, not a PostgresError.
_CLIENT_DATA_ERRORS = (OverflowError, ValueError, TypeError)

UPSERT_STRATEGY: UpsertStrategy = "temp_table"
UPSERT_FIRST_BATCHES = 8
#: Rows a COPY encodes between two yields to the event loop (asyncpg encodes a whole list at once: a batch
#: of tens of thousands of rows would hold up every other task of the process — fetches, other runs —
#: meanwhile). Large enough that the usual batches go through asyncpg's list path untouched: each row of
#: the sliced path costs an async-generator step (at 2,000, 5,000-row batches lost ~5 % in bench/sink.py,
#: and DataSync at 5 ms gained nothing measurable); 10,000 rows hold the loop ~10 ms.
COPY_SLICE = 10_000


@dataclass
class WriteResult:
    """What one batch did: rows inserted or changed, new dead letters, and a few distinct reasons."""

    written: int
    dead_lettered: int
    reasons: list[str] = field(default_factory=list)
    #: Rows of this batch the database rejected, whether their dead letter is new or already kept.
    database_rejected: int = 0


@dataclass
class RowsOutcome:
    """Rows written, and the rows the database rejected as (index into the rows given, reason)."""

    written: int = 0
    poisoned: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    is_array: bool


_column_cache: dict[str, dict[str, Column]] = {}
_upsert_first: dict[str, int] = {}  # table -> writes left that go straight to the upsert


async def delete_scope(conn: PgConnection, stream: Stream, scope: Mapping[str, Any]) -> None:
    """Delete the stream's rows whose key columns equal ``scope`` (``Batch.replace_scope``)."""
    if not set(scope) <= set(stream.key_columns):
        raise PermanentError(f"replace_scope of stream {stream.name!r} names non-key columns: "
                             f"{sorted(set(scope) - set(stream.key_columns))}")
    where = " AND ".join(f"{quote_ident(c)} = ${i}" for i, c in enumerate(scope, 1))
    await conn.execute(f"DELETE FROM {quote_table(stream.table)} WHERE {where}", *scope.values())


def dedupe_by_key(stream: Stream, records: Sequence[Row]) -> Sequence[Row]:
    """The records with one row per key: the last one wins (at the first one's position)."""
    if len(records) < 2:
        return records
    positions = [stream.columns.index(c) for c in stream.key_columns]
    keys = list(map(operator.itemgetter(*positions), records))
    if len(set(keys)) == len(keys):
        return records
    return list(dict(zip(keys, records, strict=True)).values())


def record_object(stream: Stream, row: Row) -> dict[str, Any]:
    """A row as a JSON-able object keyed by the stream's columns (how database rejects are kept)."""
    return dict(zip(stream.columns, row, strict=False))


async def write_records(conn: PgConnection, stream: Stream, rows: Sequence[Row]) -> RowsOutcome:
    """Write rows with unique keys; isolate the rows the database rejects by bisecting in savepoints.

    Non-data errors (lost connection, a missing table, a serialization failure) propagate.
    """
    outcome = RowsOutcome()
    await _write_span(conn, stream, rows, 0, len(rows), outcome)
    return outcome


async def _write_span(conn: PgConnection, stream: Stream, rows: Sequence[Row], lo: int, hi: int,
                      outcome: RowsOutcome) -> None:
    try:
        outcome.written += await _copy_or_upsert(conn, stream, rows[lo:hi])
        return
    except (asyncpg.PostgresError, *_CLIENT_DATA_ERRORS) as exc:
        reason = data_error_reason(exc)
        if reason is None:
            raise
    if hi - lo == 1:
        outcome.poisoned.append((lo, reason))
        return
    mid = (lo + hi) // 2
    await _write_span(conn, stream, rows, lo, mid, outcome)
    await _write_span(conn, stream, rows, mid, hi, outcome)


def data_error_reason(exc: BaseException) -> str | None:
    """The database's reason for rejecting a row's data, or None when ``exc`` is not about the data."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state[:2] not in _DATA_ERROR_CLASSES:
            return None
        text = f"{state}: {getattr(exc, 'message', None) or exc}"
        column = getattr(exc, "column_name", None) or _context_column(getattr(exc, "context", None))
        if column:
            text += f" (column {column})"
        if detail := getattr(exc, "detail", None):
            text += f"; {detail}"
        return text[:MAX_REASON_CHARS]
    if isinstance(exc, _CLIENT_DATA_ERRORS):
        return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]
    return None


def _context_column(context: str | None) -> str | None:
    marker = ", column "
    if not context or marker not in context:
        return None
    return context.split(marker, 1)[1].split(":", 1)[0].split("\n", 1)[0].strip() or None


async def _copy_or_upsert(conn: PgConnection, stream: Stream, rows: Sequence[Row]) -> int:
    """COPY into the target in a savepoint; on a key conflict, upsert in a fresh savepoint.

    After a conflict the next ``UPSERT_FIRST_BATCHES`` writes to that table skip the COPY attempt (a
    replay conflicts batch after batch, and a doomed COPY costs as much as the upsert itself).
    """
    left = _upsert_first.get(stream.table, 0)
    if left <= 0:
        schema, table = split_table(stream.table)
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(table, schema_name=schema, records=_in_slices(rows),
                                                 columns=list(stream.columns))
            return len(rows)
        except asyncpg.UniqueViolationError:
            left = UPSERT_FIRST_BATCHES + 1
    _upsert_first[stream.table] = left - 1
    async with conn.transaction():
        return await upsert(conn, stream, rows)


def _in_slices(rows: Sequence[Row]) -> Sequence[Row] | AsyncIterator[Row]:
    """``rows`` as they are when they fit in one :data:`COPY_SLICE`, else as an async iterator that lets
    the event loop run between slices (asyncpg encodes COPY rows from an async iterable as they come)."""
    if len(rows) <= COPY_SLICE:
        return rows
    return _yielding_slices(rows)


async def _yielding_slices(rows: Sequence[Row]) -> AsyncIterator[Row]:
    for lo in range(0, len(rows), COPY_SLICE):
        if lo:
            await asyncio.sleep(0)
        for row in rows[lo:lo + COPY_SLICE]:
            yield row


async def upsert(conn: PgConnection, stream: Stream, rows: Sequence[Row],
                 strategy: UpsertStrategy | None = None) -> int:
    """INSERT … ON CONFLICT (keys) with the stream's policy; returns the rows inserted or changed."""
    if (strategy or UPSERT_STRATEGY) == "unnest":
        columns = await column_types(conn, stream.table)
        if not any(columns[c].is_array for c in stream.columns):  # unnest would flatten array columns
            source = "unnest({}) AS s ({})".format(
                ", ".join(f"${i}::{columns[c].type}[]" for i, c in enumerate(stream.columns, 1)),
                _names(stream.columns))
            status = await conn.execute(upsert_sql(stream, source),
                                        *(list(col) for col in zip(*rows, strict=True)))
            return int(status.rsplit(" ", 1)[1])
    stage = await _staging_table(conn, stream)
    await conn.copy_records_to_table(stage, records=rows, columns=list(stream.columns))
    await conn.execute(f"ANALYZE {stage}")  # temp tables get no autovacuum stats: without them the anti-join
    status = await conn.execute(upsert_sql(stream, f"{stage} AS s"))  # may scan the whole target per batch
    await conn.execute(f"TRUNCATE {stage}")
    return int(status.rsplit(" ", 1)[1])


def upsert_sql(stream: Stream, source: str) -> str:
    """``INSERT … SELECT FROM source (aliased s) ON CONFLICT (keys)`` for the stream's policy.

    ``update_if_changed`` also skips unchanged rows before the insert: ``ON CONFLICT … WHERE`` locks every
    conflicting row even when it then changes nothing, which costs a heap write per row on a replay.
    """
    target = quote_table(stream.table)
    select = f"SELECT {', '.join('s.' + quote_ident(c) for c in stream.columns)} FROM {source}"
    sets = [f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in stream.value_columns]
    sets += [f"{quote_ident(c)} = now()" for c in stream.bookkeeping_columns]
    if stream.conflict == "ignore" or not sets:
        action = "DO NOTHING"
    else:
        action = "DO UPDATE SET " + ", ".join(sets)
        if stream.conflict == "update_if_changed" and stream.value_columns:
            values = stream.value_columns
            action += f" WHERE {_row(target, values)} IS DISTINCT FROM {_row('EXCLUDED', values)}"
            same_key = " AND ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in stream.key_columns)
            select += (f" WHERE NOT EXISTS (SELECT FROM {target} AS t WHERE {same_key} "
                       f"AND {_row('t', values)} IS NOT DISTINCT FROM {_row('s', values)})")
    return (f"INSERT INTO {target} ({_names(stream.columns)}) {select} "
            f"ON CONFLICT ({_names(stream.key_columns)}) {action}")


def _row(alias: str, columns: Iterable[str]) -> str:
    return "ROW(" + ", ".join(f"{alias}.{quote_ident(c)}" for c in columns) + ")"


async def _staging_table(conn: PgConnection, stream: Stream) -> str:
    """A session temp table with the stream's columns (created if this session has none; emptied after)."""
    digest = hashlib.sha1(f"{stream.table}:{stream.columns}".encode()).hexdigest()[:16]
    name = "batcher_stage_" + digest
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} AS SELECT {_names(stream.columns)} "
                       f"FROM {quote_table(stream.table)} WITH NO DATA")
    return name


async def column_types(conn: PgConnection, table: str) -> dict[str, Column]:
    """The table's columns, introspected once per table name and cached for the process."""
    cached = _column_cache.get(table)
    if cached is None:
        rows = await conn.fetch(Q["column_types"], quote_table(table))
        cached = {r[0]: Column(r[0], r[1], bool(r[2])) for r in rows}
        _column_cache[table] = cached
    return cached


def reset_caches() -> None:
    """Forget introspected column types and conflict hints (after a migration changed a table; tests)."""
    _column_cache.clear()
    _upsert_first.clear()


def split_table(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    return (schema or None), name


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: str) -> str:
    schema, name = split_table(table)
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


def _names(columns: Iterable[str]) -> str:
    return ", ".join(quote_ident(c) for c in columns)


async def write_dead_letters(conn: PgConnection, *, job_name: str, run_id: int | None, stream: str,
                             items: Sequence[Rejected], origin: DeadLetterOrigin) -> int:
    """Keep rejected records idempotently; returns how many were created or reopened.

    A payload already kept for (job, stream) adds nothing; a resolved one is reopened with the new reason.
    """
    unique: dict[str, tuple[str, str]] = {}
    for item in items:
        payload, digest = encode_payload(item.raw)
        unique[digest] = (clean_text(str(item.reason)), payload)
    if not unique:
        return 0
    reasons = [r for r, _ in unique.values()]
    payloads = [p for _, p in unique.values()]
    status = await conn.execute(Q["insert_dead_letters"], job_name, run_id, stream, origin, reasons,
                                payloads, list(unique))
    return int(status.rsplit(" ", 1)[1])


def clean_text(text: str) -> str:
    """A reason PostgreSQL text and jsonb can hold: NUL and lone surrogates escaped, length capped."""
    text = text.replace("\x00", "\\u0000")[:MAX_REASON_CHARS]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def encode_payload(raw: Any) -> tuple[str, str]:
    """A raw record as (JSON text safe for a ``text`` column, sha256 hex of the original).

    The payload is always JSON: text stays a JSON string, bytes that are UTF-8 become a string and other
    bytes ``{"$base64": …}``; JSON escapes NUL as ``\\u0000``. The hash covers the original bytes (text
    as UTF-8), or the canonical JSON (sorted keys) of any other value.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        original = bytes(raw)
    elif isinstance(raw, str):
        original = raw.encode("utf-8", "surrogatepass")
    else:
        original = _dumps(raw, sort_keys=True).encode("utf-8", "surrogatepass")
    return _dumps(raw), hashlib.sha256(original).hexdigest()


def _dumps(value: Any, *, sort_keys: bool = False) -> str:
    try:
        return _dumps_once(value, sort_keys=sort_keys)
    except RecursionError:  # a record too deep for JSON: keep it truncated, past 200 levels
        return _dumps_once(truncated(value), sort_keys=sort_keys)


def _dumps_once(value: Any, *, sort_keys: bool = False) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        value = _json_default(value)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys,
                      default=_json_default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: fall back to \\u escapes, which PostgreSQL text keeps
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=sort_keys,
                          default=_json_default)
    return text


def _json_default(value: Any) -> Any:
    """JSON for the values rows carry (dates, decimals, UUIDs, bytes); anything else as its str()."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return {"$base64": base64.b64encode(data).decode("ascii")}
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)
