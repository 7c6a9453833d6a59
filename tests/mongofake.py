"""A wire-level MongoDB for tests: MongoDB's own protocol test server (``mockupdb``) answering from a
``mongomock`` store, so the code under test runs the production client (pymongo's ``AsyncMongoClient``)
over a real socket.

Answers ``hello``/``ismaster``, ``ping``, ``insert``, ``update`` (operators or a replacement, upserts,
duplicate-key write errors with code 11000), ``delete``, ``find`` (filter, sort, limit; one batch), ``drop``,
``createIndexes`` and ``endSessions``.
``down = True`` simulates an outage: every request (the handshake included) is hung up on. With
``crash_after_updates = n`` the n-th next ``update`` is applied and then hung up on (its reply is lost, as
when the network or the worker dies between MongoDB's write and PostgreSQL's commit), and the server
stays down until the test sets ``down = False``.

Lives in tests/ because mockupdb and mongomock are dev-only. The fixture ``mongo`` gives a
:class:`MongoTarget`: this fake, or a real server when ``TEST_MONGODB_URI`` is set (then each test session
uses its own database and drops it at the end; the outage tests need the fake and are skipped).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mongomock
import pytest
from mockupdb import Matcher, MockupDB

TEST_MONGODB_URI = os.environ.get("TEST_MONGODB_URI", "")
#: Short timeouts so an outage fails an operation in well under a second.
FAST_PARAMS = "serverSelectionTimeoutMS=400&connectTimeoutMS=400&socketTimeoutMS=2000"


class FakeMongo:
    """mockupdb in front of a mongomock store; ``start()`` returns a ``mongodb://`` URI."""

    def __init__(self) -> None:
        self.store: mongomock.MongoClient = mongomock.MongoClient()
        self.server = MockupDB(auto_ismaster=False)
        self.down = False
        self.crash_after_updates: int | None = None
        self.updates = 0
        self._lock = threading.Lock()
        self.server.autoresponds(Matcher(), self._answer)

    def start(self) -> str:
        self.server.run()
        return str(self.server.uri)

    def stop(self) -> None:
        self.server.stop()

    def _answer(self, request: Any) -> Any:
        with self._lock:
            if self.down:
                return request.hangup()
            name = request.command_name
            if name in ("hello", "ismaster", "isMaster"):
                return request.ok(isWritablePrimary=True, ismaster=True, helloOk=True, minWireVersion=0,
                                  maxWireVersion=21, maxBsonObjectSize=16 * 1024 * 1024,
                                  maxMessageSizeBytes=48_000_000, maxWriteBatchSize=100_000)
            handler = getattr(self, f"_cmd_{name}", None)
            if handler is None:
                return request.command_err(59, f"no such command: {name!r} (tests/mongofake.py)")
            try:
                reply = handler(request.doc)
            except Exception as exc:  # noqa: BLE001 - the fake answers what mongomock refuses as an error
                return request.command_err(2, f"{type(exc).__name__}: {exc}")
            if name == "update" and self.crash_after_updates is not None:
                self.crash_after_updates -= 1
                if self.crash_after_updates <= 0:
                    self.crash_after_updates, self.down = None, True
                    return request.hangup()  # applied, but the reply is lost
            return request.ok(**reply)

    def _db(self, doc: dict[str, Any]) -> Any:
        return self.store[doc["$db"]]

    def _cmd_ping(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _cmd_endSessions(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _cmd_drop(self, doc: dict[str, Any]) -> dict[str, Any]:
        self._db(doc).drop_collection(doc["drop"])
        return {}

    def _cmd_createIndexes(self, doc: dict[str, Any]) -> dict[str, Any]:
        coll = self._db(doc)[doc["createIndexes"]]
        for index in doc.get("indexes", []):
            coll.create_index(list(index["key"].items()), name=index["name"], unique=bool(index.get("unique")))
        return {"numIndexesBefore": 1, "numIndexesAfter": 1 + len(doc.get("indexes", []))}

    def _cmd_insert(self, doc: dict[str, Any]) -> dict[str, Any]:
        coll, n, errors = self._db(doc)[doc["insert"]], 0, []
        for i, document in enumerate(doc.get("documents", [])):
            try:
                coll.insert_one(document)
                n += 1
            except mongomock.DuplicateKeyError as exc:
                errors.append({"index": i, "code": 11000, "errmsg": f"E11000 duplicate key: {exc}"})
        return {"n": n, **({"writeErrors": errors} if errors else {})}

    def _cmd_update(self, doc: dict[str, Any]) -> dict[str, Any]:
        self.updates += 1
        coll, n, modified, upserted, errors = self._db(doc)[doc["update"]], 0, 0, [], []
        for i, st in enumerate(doc.get("updates", [])):
            try:
                replace = isinstance(st["u"], dict) and not any(k.startswith("$") for k in st["u"])
                update = coll.replace_one if replace else coll.update_many if st.get("multi") else coll.update_one
                result = update(st["q"], st["u"], upsert=bool(st.get("upsert")))
            except mongomock.DuplicateKeyError as exc:
                errors.append({"index": i, "code": 11000, "errmsg": f"E11000 duplicate key: {exc}"})
                continue
            except mongomock.WriteError as exc:
                errors.append({"index": i, "code": exc.code or 2, "errmsg": str(exc)})
                continue
            n += result.matched_count
            modified += result.modified_count
            if result.upserted_id is not None:
                upserted.append({"index": i, "_id": result.upserted_id})
                n += 1
        return {"n": n, "nModified": modified, **({"upserted": upserted} if upserted else {}),
                **({"writeErrors": errors} if errors else {})}

    def _cmd_delete(self, doc: dict[str, Any]) -> dict[str, Any]:
        coll, n = self._db(doc)[doc["delete"]], 0
        for st in doc.get("deletes", []):
            n += (coll.delete_one if st.get("limit") == 1 else coll.delete_many)(st["q"]).deleted_count
        return {"n": n}

    def _cmd_find(self, doc: dict[str, Any]) -> dict[str, Any]:
        cursor = self._db(doc)[doc["find"]].find(doc.get("filter", {}), doc.get("projection"))
        if doc.get("sort"):
            cursor = cursor.sort(list(doc["sort"].items()))
        if doc.get("limit"):
            cursor = cursor.limit(int(doc["limit"]))
        return {"cursor": {"id": 0, "ns": f"{doc['$db']}.{doc['find']}", "firstBatch": list(cursor)}}


@dataclass
class MongoTarget:
    """Where a test's MongoDB is: its URI, URI options, database, and the fake (None: a real server)."""

    uri: str
    params: str
    database: str
    fake: FakeMongo | None

    def require_fake(self) -> FakeMongo:
        if self.fake is None:
            pytest.skip("simulating an outage needs the wire-level fake (TEST_MONGODB_URI is set)")
        return self.fake


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoTarget]:
    """The session's MongoDB: a real one at TEST_MONGODB_URI, else the wire-level fake."""
    database = f"batcher_test_{uuid.uuid4().hex[:10]}"
    if TEST_MONGODB_URI:
        yield MongoTarget(TEST_MONGODB_URI, FAST_PARAMS, database, None)
        import pymongo

        pymongo.MongoClient(TEST_MONGODB_URI).drop_database(database)
        return
    fake = FakeMongo()
    uri = fake.start()
    yield MongoTarget(uri, FAST_PARAMS, database, fake)
    fake.stop()


@pytest.fixture
def mongo(mongo_server: MongoTarget) -> Iterator[MongoTarget]:
    """The session's MongoDB with its test database emptied and the fake up."""
    if mongo_server.fake is not None:
        mongo_server.fake.down = False
        mongo_server.fake.crash_after_updates = None
        mongo_server.fake.store.drop_database(mongo_server.database)
    else:
        import pymongo

        pymongo.MongoClient(mongo_server.uri).drop_database(mongo_server.database)
    yield mongo_server
    if mongo_server.fake is not None:
        mongo_server.fake.down = False
