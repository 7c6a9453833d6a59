"""Dead-letter operations behind ``batcher dead-letters list|replay|purge``.

Owns reading, purging and replaying the ``dead_letters`` table; writing new dead letters is the sink's
job (:func:`batcher.sinks.write_dead_letters`, which also defines the payload format). Takes the asyncpg
pool duck-typed, so it imports no driver itself.

Replay feeds each unresolved dead letter of a job back into its stream:

- origin ``handler``: the payload goes through the stream's ``parse_raw`` (a stream without one cannot
  replay handler rejects: they are skipped and stay unresolved);
- origin ``database``: the payload is the sink's own JSON object keyed by the stream's columns; it is
  decoded back into a row in ``Stream.columns`` order, each value converted for its column's type.

Rows that parse are written with the stream's conflict policy in one transaction per page and stream; the
dead letters of rows written (or already present) are marked resolved, the others keep their row with
the new reason. Streams whose (effective) sink is not PostgreSQL are skipped: their dead letters stay
unresolved, never written into a PostgreSQL table. ``batcher dead-letters replay`` runs it as a run of
the job (:mod:`batcher.replay`): every one of those transactions is opened behind that run's fence, so a
replay never writes beside a live run of the job. The SQL constants below belong in ``queries.sql``; they
live here until moved there.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from batcher import sinks
from batcher.handler import Stream
from batcher.store import Q

if TYPE_CHECKING:
    import asyncpg

    from batcher.sinks import PgConnection

REPLAY_PAGE = 1000

#: Rows to write, each with the ids of the dead letters it replays (newest last).
_Entries = list[tuple[list[int], tuple[Any, ...]]]
#: Opens one write transaction and yields its connection (a run's fenced transaction, or a plain one).
Transaction = Callable[[], AbstractAsyncContextManager[Any]]


@dataclass
class ReplayResult:
    """What a replay did: dead letters resolved, rows written, still failing, and those it could not try."""

    resolved: int = 0
    written: int = 0
    still_failing: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


async def list_dead_letters(pool: asyncpg.Pool[Any], job: str | None, limit: int,
                            include_resolved: bool = False) -> list[dict[str, Any]]:
    """Newest first: one job's dead letters (or every job's), unresolved unless asked otherwise."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(Q["list_dead_letters"], job, include_resolved, limit)
    return [dict(r) for r in rows]


async def purge_dead_letters(pool: asyncpg.Pool[Any], job: str, before: datetime | None) -> int:
    """Delete a job's dead letters (created before ``before`` when given); returns how many."""
    async with pool.acquire() as conn:
        status = await conn.execute(Q["purge_dead_letters"], job, before)
    return int(status.rsplit(" ", 1)[1])


async def replay_dead_letters(pool: asyncpg.Pool[Any], job_name: str, streams: Mapping[str, Stream],
                              run_id: int | None, transaction: Transaction | None = None) -> ReplayResult:
    """Write a job's unresolved dead letters through their streams; resolve the ones that now go in. Each
    write opens ``transaction()`` (default: a plain transaction on ``pool``)."""
    result = ReplayResult()
    after = 0
    while True:
        page = await pool.fetch(Q["unresolved_dead_letters"], job_name, after, REPLAY_PAGE)
        if not page:
            return result
        after = page[-1]["id"]
        by_stream: dict[str, list[Any]] = {}
        for letter in page:
            by_stream.setdefault(letter["stream"], []).append(letter)
        for name, letters in by_stream.items():
            stream = streams.get(name)
            if stream is None or stream.sink != "postgres":
                result.skipped += len(letters)
                if stream is not None and len(result.reasons) < sinks.MAX_REASONS:
                    result.reasons.append(f"stream {name!r} goes to {stream.sink}: its dead letters are not "
                                          f"replayed (only PostgreSQL streams are); they stay unresolved")
                continue
            async with (transaction or _plain(pool))() as conn:
                await _replay_stream(conn, stream, letters, run_id, result)


def _plain(pool: asyncpg.Pool[Any]) -> Transaction:
    @asynccontextmanager
    async def transaction() -> Any:
        async with pool.acquire() as conn, conn.transaction():
            yield conn
    return transaction


async def _replay_stream(conn: PgConnection, stream: Stream, letters: list[Any], run_id: int | None,
                         result: ReplayResult) -> None:
    """Write one stream's page of parsed dead letters and record the outcome, in the caller's transaction."""
    columns = await sinks.column_types(conn, stream.table)
    entries, failed = _parse_letters(stream, columns, letters, result)
    outcome = await sinks.write_records(conn, stream, [row for _, row in entries]) if entries else None
    poisoned = dict(outcome.poisoned) if outcome else {}
    failed += [(letter_id, sinks.clean_text(poisoned[i])) for i, (ids, _) in enumerate(entries)
               if i in poisoned for letter_id in ids]
    resolved = [letter_id for i, (ids, _) in enumerate(entries) if i not in poisoned for letter_id in ids]
    if resolved:
        await conn.execute(Q["resolve_dead_letters"], resolved, run_id)
    if failed:
        await conn.execute(Q["update_dead_letter_reasons"], [f[0] for f in failed],
                           [f[1] for f in failed], run_id)
    result.resolved += len(resolved)
    result.written += outcome.written if outcome else 0
    result.still_failing += len(failed)
    for _, reason in failed:
        if len(result.reasons) < sinks.MAX_REASONS and reason not in result.reasons:
            result.reasons.append(reason)


def _parse_letters(stream: Stream, columns: Mapping[str, sinks.Column], letters: list[Any],
                   result: ReplayResult) -> tuple[_Entries, list[tuple[int, str]]]:
    """Rows to write, one per key (the newest dead letter wins, carrying the ids it supersedes), and the
    dead letters whose payload still does not parse, with the reason."""
    rows: dict[Any, tuple[list[int], tuple[Any, ...]]] = {}
    failed: list[tuple[int, str]] = []
    key_of = _key_getter(stream)
    for letter in letters:
        parse = _parser(stream, letter["origin"], columns)
        if parse is None:
            result.skipped += 1
            continue
        try:
            row = tuple(parse(letter["payload"]))
            if len(row) != len(stream.columns):
                raise ValueError(f"parsed {len(row)} values for {len(stream.columns)} columns")
        except ValueError as exc:
            failed.append((letter["id"], sinks.clean_text(f"replay: {exc}")))
            continue
        ids = rows.pop(key_of(row), ([], ()))[0]
        rows[key_of(row)] = ([*ids, letter["id"]], row)
    return list(rows.values()), failed


def _key_getter(stream: Stream) -> Callable[[tuple[Any, ...]], Any]:
    positions = [stream.columns.index(c) for c in stream.key_columns]
    return lambda row: tuple(row[p] for p in positions)


def _parser(stream: Stream, origin: str, columns: Mapping[str, sinks.Column],
            ) -> Callable[[str], tuple[Any, ...]] | None:
    """How to turn this dead letter's payload back into a row, or None when it cannot be replayed."""
    if origin == "database":
        return lambda payload: decode_row(stream, columns, payload)
    return stream.parse_raw


def decode_row(stream: Stream, columns: Mapping[str, sinks.Column], payload: str) -> tuple[Any, ...]:
    """A database-rejected row's payload (JSON object keyed by column) back into a typed row."""
    obj = json.loads(payload)
    if not isinstance(obj, dict):
        raise ValueError("payload is not a JSON object of columns")
    missing = [c for c in stream.columns if c not in obj]
    if missing:
        raise ValueError(f"payload lacks columns {', '.join(missing)}")
    return tuple(_from_json(obj[c], columns[c].type if c in columns else "") for c in stream.columns)


_TIMESTAMPS = ("timestamp with time zone", "timestamp without time zone")
_TIMES = ("time with time zone", "time without time zone")
_FLOATS = ("real", "double precision")


def _from_json(value: Any, type_name: str) -> Any:
    """Undo :func:`batcher.sinks.encode_payload`'s JSON conversions for a column of ``type_name``."""
    if value is None:
        return None
    try:
        return _convert(value, type_name)
    except (TypeError, ArithmeticError) as exc:
        raise ValueError(f"cannot read {value!r} as {type_name}: {exc}") from None


def _convert(value: Any, type_name: str) -> Any:
    if type_name in _TIMESTAMPS:
        return dt.datetime.fromisoformat(value)
    if type_name == "date":
        return dt.date.fromisoformat(value)
    if type_name in _TIMES:
        return dt.time.fromisoformat(value)
    if type_name == "interval":
        return dt.timedelta(seconds=value)
    if type_name == "numeric":
        return decimal.Decimal(str(value))
    if type_name in _FLOATS:
        return float(value)
    if type_name == "uuid":
        return uuid.UUID(value)
    if type_name == "bytea":
        if isinstance(value, dict) and "$base64" in value:
            return base64.b64decode(value["$base64"])
        return str(value).encode("utf-8")
    return value
