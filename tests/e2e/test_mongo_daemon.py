"""The daemon process with MongoDB configured (issue 16): a job with ``sink = "mongo"`` writes documents and,
with ``[mongo] history = true``, its finished run appears in ``jobhistories`` — the mirror task is wired
into ``batcher run`` — against the wire-level fake (tests/mongofake.py) reached over TCP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.procs import Proc, batcher_env, poll, write_config
from tests.mongofake import MongoTarget
from tests.polling import wait_for


async def test_daemon_writes_a_mongo_jobs_documents_and_mirrors_its_run_history(
        db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc], mongo: MongoTarget) -> None:
    """`batcher run` with a synthetic job whose entry says sink = "mongo" (due at once): the run succeeds,
    its 120 records are documents of synthetic_records (none in PostgreSQL), and the run's history
    document (``_id`` = run id, status succeeded) is mirrored; SIGTERM then stops the daemon with 0."""
    config = write_config(tmp_path / "b.toml", {"docs": {"type": "synthetic", "sink": "mongo",
                                                         "interval_minutes": 1440,
                                                         "params": {"records": 120, "batch_size": 40}}})
    env = batcher_env(database_url, redis_url, config, tmp_path / "data", BATCHER_MONGODB_URI=mongo.uri,
                      MONGODB_PARAMS=mongo.params, BATCHER_MONGODB_DATABASE=mongo.database,
                      BATCHER_MONGODB_HISTORY="true")
    daemon = Proc(["run"], env, tmp_path / "daemon.log")
    procs.append(daemon)
    run_id = await poll(db, "SELECT id FROM batch_runs WHERE job_name = 'docs' AND status = 'succeeded'")
    assert await db.fetchval("SELECT count(*) FROM synthetic_records") == 0
    docs = await _wait_docs(mongo, "synthetic_records", 120)
    assert sorted(d["seq"] for d in docs) == list(range(120))
    history = await _wait_docs(mongo, "jobhistories", 1)
    assert history[0]["_id"] == run_id and history[0]["status"] == "succeeded" and history[0]["jobId"] == "docs"
    assert daemon.terminate_and_wait(30) == 0, daemon.tail()


async def _wait_docs(target: MongoTarget, collection: str, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    from tests.integration.test_mongo_sink import documents

    seen: list[dict[str, Any]] = []

    async def enough() -> list[dict[str, Any]] | None:
        seen[:] = await documents(target, collection)
        return list(seen) if len(seen) >= n else None

    found: list[dict[str, Any]] = await wait_for(enough, timeout, 0.1, what=f"{n} documents in {collection}",
                                                 details=lambda: f"{len(seen)} there")
    return found
