"""The job-history mirror: every finished run, upserted by run id into MongoDB's ``jobhistories``
collection in the original system's document schema (``[mongo] history = true``).

A run never waits for MongoDB: runs finish in PostgreSQL only, and the daemon's mirror task copies
finished runs afterwards. It reads ``batch_runs`` in (finished_at, id) order from a watermark kept in
PostgreSQL (``jobhistory_mirror``), upserts each page (``replaceOne`` by ``_id`` = run id: idempotent) and
then moves the watermark. A pass that fails (MongoDB down) logs ``jobhistory_mirror_failed`` and leaves
the watermark where it was; the next pass (every few seconds, backing off to a minute) catches up from
there. Each pass re-reads ``OVERLAP`` before the watermark, because ``finished_at`` is the finishing
transaction's start time, so a run can commit slightly after a later-stamped one was mirrored; runs this
process already sent in that window are skipped.

Document fields (the original schema) from ``batch_runs``: ``_id`` = id, ``status`` = status
(succeeded | failed | cancelled | skipped), ``sourceId`` = source_id, ``startTime`` = started_at (null for
a run that never started), ``endTime`` = finished_at, ``errors`` = errors (list of messages), ``data`` =
the rest of the run (trigger, reason, attempt, records, deadLetters, itemsChecked, itemsUpdated, retryOf,
rootRunId, progress, result), ``jobId`` = job_name (the job's identity), ``name`` = job_type (the
original's job name: it had one job per type), ``runtimeMilliseconds`` = runtime_ms (claim → final status;
null when it never ran), ``ingressBytes`` = ingress_bytes, ``apiCalls`` = api_calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from batcher.store import Q

if TYPE_CHECKING:
    from batcher.sinks.mongo import MongoConnection

log = structlog.get_logger("batcher.jobhistory")
COLLECTION = "jobhistories"
OVERLAP = timedelta(minutes=2)
PAGE = 500
INTERVAL = 5.0
MAX_BACKOFF = 60.0
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


def history_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """A finished run as a ``jobhistories`` document (see the module docstring for each field)."""
    data = {"trigger": row["trigger"], "reason": row["reason"], "attempt": row["attempt"],
            "records": row["records"], "deadLetters": row["dead_letters"], "itemsChecked": row["items_checked"],
            "itemsUpdated": row["items_updated"], "retryOf": row["retry_of"], "rootRunId": row["root_run_id"],
            "progress": row["progress"], "result": row["result"]}
    return {"_id": row["id"], "status": row["status"], "sourceId": row["source_id"],
            "startTime": row["started_at"], "endTime": row["finished_at"], "errors": list(row["errors"] or []),
            "data": data, "jobId": row["job_name"], "name": row["job_type"],
            "runtimeMilliseconds": row["runtime_ms"], "ingressBytes": row["ingress_bytes"],
            "apiCalls": row["api_calls"]}


class HistoryMirror:
    """Copies finished runs into ``jobhistories``; :meth:`run` is the daemon's background task."""

    def __init__(self, pool: Any, mongo: MongoConnection, *, interval: float = INTERVAL,
                 overlap: timedelta = OVERLAP) -> None:
        self._pool = pool
        self._mongo = mongo
        self._interval = interval
        self._overlap = overlap
        self._sent: dict[int, datetime] = {}  # runs sent within the overlap window: run id → finished_at

    async def mirror_once(self) -> int:
        """One catch-up pass; returns the documents upserted. Raises when MongoDB or PostgreSQL fails
        (the watermark then stays at the last page that was written)."""
        watermark: datetime | None = await self._pool.fetchval(Q["jobhistory_watermark"])
        after = (watermark - self._overlap if watermark else BEGINNING, 0)
        sent = 0
        while rows := await self._pool.fetch(Q["finished_runs_after"], after[0], after[1], PAGE):
            docs = [history_document(r) for r in rows if self._sent.get(r["id"]) != r["finished_at"]]
            await self._mongo.replace_by_id(COLLECTION, docs)
            sent += len(docs)
            self._sent.update((r["id"], r["finished_at"]) for r in rows)
            await self._pool.execute(Q["set_jobhistory_watermark"], rows[-1]["finished_at"])
            after = (rows[-1]["finished_at"], int(rows[-1]["id"]))
        horizon = after[0] - self._overlap
        self._sent = {k: v for k, v in self._sent.items() if v >= horizon}
        return sent

    async def run(self) -> None:
        """Mirror every ``interval`` seconds until cancelled; failures back off up to a minute."""
        delay = self._interval
        while True:
            try:
                sent = await self.mirror_once()
                if sent:
                    log.info("jobhistory_mirrored", documents=sent)
                delay = self._interval
            except Exception as exc:  # noqa: BLE001 - the mirror never stops the daemon; it retries later
                log.warning("jobhistory_mirror_failed", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
                delay = min(delay * 2, MAX_BACKOFF)
            await asyncio.sleep(delay)

