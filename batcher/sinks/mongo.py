"""The MongoDB sink: one batch's records as documents, upserted by key (pymongo's ``AsyncMongoClient``).

Owns pymongo (the only module that imports it) and the process's one MongoDB client
(:class:`MongoConnection`, opened on first use). DESIGN §7 for MongoDB:

- a stream's target (``Stream.table``, verbatim) is the collection; each record is one document holding
  every column (key, value and bookkeeping columns) under its column name, with ``_id`` the key columns as
  a subdocument in key-column order (``{"scope_key": "42", "seq": 7}``), so a key is one document;
- duplicate keys within a batch are dropped first (last wins), then one **unordered** bulk of
  ``UpdateOne(upsert=True)`` by ``_id`` is sent, with the stream's conflict policy:
  ``ignore`` — ``$setOnInsert`` of the whole document (an existing document is never touched);
  ``update`` — ``$set`` of the value and bookkeeping columns (``$setOnInsert`` of the keys);
  ``update_if_changed`` — the same update, filtered on ``_id`` AND NOT (every value column equal), so an
  unchanged document is not written at all, bookkeeping included. Its upsert then meets the existing
  ``_id`` (duplicate key, code 11000): those operations (and any other duplicate-key race) are sent once
  more without ``upsert``, which updates a document that changed meanwhile and touches nothing otherwise;
- bookkeeping columns get the batch's write time (this process's clock, UTC), on insert and on change;
- values are stored as BSON: ``date`` → midnight UTC datetime, ``Decimal`` → Decimal128, ``UUID``/``time``
  → text, tuples/sets → arrays, jsonb columns (dicts, lists) → subdocuments/arrays. Equality in
  ``update_if_changed`` is MongoDB query equality (a stored array counts as equal to a new scalar that
  it contains; subdocuments compare field order too — a replay builds them the same way);
- ``Batch.replace_scope`` (key-column values): the documents of that slice are deleted first (by their
  top-level key fields, indexed on first use), so the batch replaces it exactly; a replay deletes and
  writes it again (the delete is not atomic with the upserts: a crash between them is repaired by the
  replay from the unmoved checkpoint);
- a record MongoDB rejects for its data (a write error other than a duplicate key, or a value BSON cannot
  encode) does not fail the batch: it becomes a dead letter (origin ``database``) in PostgreSQL, inside
  the caller's transaction, like the PostgreSQL sink's rejects. Any other failure (server unreachable,
  write concern) raises :class:`~batcher.errors.TransientError`: the caller's PostgreSQL transaction
  (fence, dead letters, checkpoint, counters) rolls back and the run retries from the last checkpoint.

The write is at-least-once-then-idempotent, not one transaction with the checkpoint: documents written
before a crash (or a PostgreSQL failure) stay, and the replay from the older checkpoint upserts the same
documents again.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import bson
from bson.decimal128 import Decimal128
from pymongo import AsyncMongoClient, ReplaceOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from batcher.errors import ConfigError, PermanentError, TransientError
from batcher.handler import Stream

Document = dict[str, Any]
DUPLICATE_KEY = 11000
MAX_REASON_CHARS = 2000


def mongo_uri(uri: str, params: str | None) -> str:
    """The MongoDB URI with ``MONGODB_PARAMS`` (URI query options) appended."""
    if not params:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}{params.lstrip('?&')}"


def database_name(uri: str, setting: str | None) -> str:
    """The database batcher writes to: ``mongo.database`` when set, else the URI's path (``/ingest``)."""
    if setting:
        return setting
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("mongodb", "mongodb+srv"):
        raise ConfigError("MONGODB_URI must start with mongodb:// or mongodb+srv://", key="mongo.uri")
    # Parsed by hand, not with pymongo's parse_uri, which resolves mongodb+srv hosts over DNS.
    name = unquote(rest.partition("/")[2].partition("?")[0])
    if not name:
        raise ConfigError("no MongoDB database: put it in the URI (mongodb://host/DATABASE) or set "
                          "mongo.database", key="mongo.database")
    return str(name)


class MongoConnection:
    """The process's MongoDB client, created on first use and shared by every run (and the history
    mirror); :meth:`close` at shutdown. The URI (credentials) is never logged or put in an error."""

    def __init__(self, uri: str, params: str | None = None, database: str | None = None) -> None:
        self._uri = mongo_uri(uri, params)
        self._database = database
        self._client: AsyncMongoClient[Document] | None = None
        self.indexed: set[str] = set()  # collections whose key-field index this process ensured

    @property
    def database_name(self) -> str:
        """``mongo.database``, else the URI's; ConfigError when neither names one."""
        return database_name(self._uri, self._database)

    @property
    def database(self) -> AsyncDatabase[Document]:
        if self._client is None:
            self._client = AsyncMongoClient(self._uri, tz_aware=True)
        return self._client[self.database_name]

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def replace_by_id(self, collection: str, documents: Sequence[Document]) -> None:
        """Upsert whole documents by ``_id`` (one unordered bulk); any failure raises TransientError."""
        if not documents:
            return
        ops = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in documents]
        try:
            await self.database[collection].bulk_write(ops, ordered=False)
        except PyMongoError as exc:
            raise TransientError(f"MongoDB write failed: {_describe(exc)}") from None


@dataclass
class MongoOutcome:
    """Documents inserted or changed, and the records MongoDB rejected as (index, reason)."""

    written: int = 0
    poisoned: list[tuple[int, str]] = field(default_factory=list)


def bson_value(value: Any) -> Any:
    """A record value as BSON can store it (see the module docstring)."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, decimal.Decimal):
        return Decimal128(value)
    if isinstance(value, uuid.UUID | dt.time):
        return str(value) if isinstance(value, uuid.UUID) else value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping):
        return {str(k): bson_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [bson_value(v) for v in value]
    return value


def document_id(stream: Stream, row: Sequence[Any]) -> Document:
    """The ``_id`` of a record: its key columns as a subdocument, in key-column order."""
    return {c: bson_value(v) for c, v in zip(stream.key_columns, row, strict=False)}


def _spec(stream: Stream, row: Sequence[Any], now: dt.datetime) -> tuple[Document, Document]:
    """(filter, update) of one record's upsert under the stream's conflict policy."""
    key = document_id(stream, row)
    values = {c: bson_value(v) for c, v in zip(stream.value_columns, row[len(stream.key_columns):], strict=False)}
    changed = {**values, **dict.fromkeys(stream.bookkeeping_columns, now)}
    if stream.conflict == "ignore" or not changed:
        return {"_id": key}, {"$setOnInsert": {**key, **changed}}
    query: Document = {"_id": key}
    if stream.conflict == "update_if_changed" and values:
        query["$nor"] = [values]
    return query, {"$set": changed, "$setOnInsert": key}


async def write_documents(connection: MongoConnection, stream: Stream, rows: Sequence[Sequence[Any]],
                          ) -> MongoOutcome:
    """Upsert rows with unique keys into the stream's collection (see the module docstring)."""
    now = dt.datetime.now(dt.UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # BSON dates have millisecond precision
    specs = [_spec(stream, row, now) for row in rows]
    outcome = MongoOutcome()
    collection = connection.database[stream.table]
    indexes = list(range(len(rows)))
    try:
        retry = await _bulk(collection, specs, indexes, outcome, upsert=True)
    except (bson.errors.InvalidDocument, OverflowError) as exc:  # a value BSON cannot encode
        outcome = MongoOutcome(poisoned=_unencodable(specs))
        if not outcome.poisoned:
            raise TransientError(f"MongoDB write failed: {_describe(exc)}") from None
        bad = {i for i, _ in outcome.poisoned}
        indexes = [i for i in indexes if i not in bad]  # the bulk is sent again: the upserts are idempotent
        retry = await _bulk(collection, specs, indexes, outcome, upsert=True)
    if retry and stream.conflict != "ignore":
        await _bulk(collection, specs, retry, outcome, upsert=False)
    return outcome


async def _bulk(collection: Any, specs: Sequence[tuple[Document, Document]], indexes: list[int],
                outcome: MongoOutcome, *, upsert: bool) -> list[int]:
    """One unordered bulk of the specs at ``indexes``; returns the indexes that met a duplicate key (sent
    again without upsert); other write errors become ``outcome.poisoned``."""
    if not indexes:
        return []
    ops = [UpdateOne(*specs[i], upsert=upsert) for i in indexes]
    try:
        result = await collection.bulk_write(ops, ordered=False)
        details: Mapping[str, Any] = result.bulk_api_result
    except BulkWriteError as exc:
        details = exc.details
        if details.get("writeConcernErrors"):
            raise TransientError(f"MongoDB write concern failed: {details['writeConcernErrors'][0]}") from None
    except PyMongoError as exc:
        raise TransientError(f"MongoDB write failed: {_describe(exc)}") from None
    outcome.written += int(details.get("nUpserted", 0)) + int(details.get("nModified", 0))
    retry = []
    for error in details.get("writeErrors", []):
        index = indexes[int(error["index"])]
        if int(error.get("code", 0)) == DUPLICATE_KEY:
            retry.append(index)
        else:
            reason = f"MongoDB error {error.get('code')}: {error.get('errmsg', '')}"[:MAX_REASON_CHARS]
            outcome.poisoned.append((index, reason))
    return retry


def _unencodable(specs: Sequence[tuple[Document, Document]]) -> list[tuple[int, str]]:
    """The records whose operation BSON cannot encode, as (index, reason)."""
    bad = []
    for i, (query, update) in enumerate(specs):
        try:
            bson.encode({"q": query, "u": update})
        except (bson.errors.InvalidDocument, OverflowError) as exc:
            bad.append((i, f"MongoDB cannot store the record: {type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]))
    return bad


def _describe(exc: BaseException) -> str:
    """An error's class and first line (pymongo's messages name hosts, never the URI's credentials)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


async def delete_scope(connection: MongoConnection, stream: Stream, scope: Mapping[str, Any]) -> int:
    """Delete the stream's documents whose key fields equal ``scope`` (``Batch.replace_scope``: the batch
    then replaces that slice exactly); returns how many. The first use per collection in this process
    creates an index on the key fields (idempotent), so the delete does not scan the collection."""
    if not set(scope) <= set(stream.key_columns):
        raise PermanentError(f"replace_scope of stream {stream.name!r} names non-key columns: "
                             f"{sorted(set(scope) - set(stream.key_columns))}")
    collection = connection.database[stream.table]
    try:
        if stream.table not in connection.indexed:
            await collection.create_index([(c, 1) for c in stream.key_columns], name="batcher_key_fields")
            connection.indexed.add(stream.table)
        result = await collection.delete_many({c: bson_value(v) for c, v in scope.items()})
    except PyMongoError as exc:
        raise TransientError(f"MongoDB delete failed: {_describe(exc)}") from None
    return int(result.deleted_count)


async def mongo_health(uri: str, timeout: float, params: str | None = None) -> tuple[bool, str]:
    """Ping MongoDB with a short server-selection timeout: (ok, reason). The URI (credentials) is never
    part of the reason."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongo_uri(uri, params), serverSelectionTimeoutMS=int(timeout * 1000), connectTimeoutMS=int(timeout * 1000))
    try:
        info = await client.admin.command("ping")
        return bool(info.get("ok")), "MongoDB answered ping"
    except PyMongoError as exc:
        return False, f"MongoDB is unreachable: {type(exc).__name__}"
    finally:
        await client.close()
