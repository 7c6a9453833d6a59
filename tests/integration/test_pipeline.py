"""Prefetch + sink + checkpoint in one transaction per batch, the way the runner composes them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from batcher import sinks
from batcher.handler import Batch, Rejected, Stream
from batcher.pipeline import prefetching

STREAM = Stream(name="run_ignore", table="synthetic_records", key_columns=("scope_key", "seq"),
                value_columns=("value", "amount", "attrs"), bookkeeping_columns=("ingested_at",),
                json_columns=("attrs",))
CHECKPOINT_SQL = """
INSERT INTO checkpoints (job_name, stream, scope_key, cursor, run_id) VALUES ('job', $1, '', $2, 1)
ON CONFLICT (job_name, stream, scope_key) DO UPDATE SET cursor = EXCLUDED.cursor
"""


async def handler(batches: int, size: int, *, fail_at: int | None = None) -> AsyncIterator[Batch]:
    """Synthetic-like batches; every 50th record carries a NUL (poison), every 70th is a handler reject."""
    for b in range(batches):
        if b == fail_at:
            raise ConnectionResetError("upstream went away")
        records: list[tuple[Any, ...]] = []
        rejected: list[Rejected] = []
        for n in range(b * size, (b + 1) * size):
            if n % 70 == 69:
                rejected.append(Rejected(raw={"seq": n}, reason="synthetic reject"))
                continue
            value = f"v{n}" + ("\x00" if n % 50 == 49 else "")
            records.append(("s", n, value, n, {"n": n}))
        yield Batch(stream=STREAM.name, records=records, rejected=rejected,
                    checkpoint={"next_seq": (b + 1) * size})


async def run_pipeline(pool: asyncpg.Pool, source: AsyncIterator[Batch]) -> tuple[int, int]:
    written = dead = 0
    async with pool.acquire() as conn, prefetching(source, depth=2, max_bytes=1 << 20) as batches:
        async for batch in batches:
            async with conn.transaction():
                result = await sinks.write_batch(conn, STREAM, batch, job_name="job", run_id=1)
                await conn.execute(CHECKPOINT_SQL, STREAM.name, batch.checkpoint)
            written += result.written
            dead += result.dead_lettered
    return written, dead


async def counts(pool: asyncpg.Pool) -> tuple[int, int, Any]:
    async with pool.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM synthetic_records")
        dead = await conn.fetchval("SELECT count(*) FROM dead_letters")
        cursor = await conn.fetchval("SELECT cursor FROM checkpoints WHERE job_name = 'job'")
    return rows, dead, cursor


async def test_stream_commits_rows_dead_letters_and_checkpoints(db: asyncpg.Pool) -> None:
    """10 batches of 100: poisoned rows and rejects become dead letters, the rest and the checkpoint commit;
    running the same stream again adds nothing."""
    written, dead = await run_pipeline(db, handler(10, 100))
    rejects, poisoned = 1000 // 70, sum(1 for n in range(1000) if n % 50 == 49 and n % 70 != 69)
    assert (written, dead) == (1000 - rejects - poisoned, rejects + poisoned)
    assert await counts(db) == (written, dead, {"next_seq": 1000})
    assert await run_pipeline(db, handler(10, 100)) == (0, 0)
    async with db.acquire() as conn:
        origins = dict(await conn.fetch("SELECT origin, count(*) FROM dead_letters GROUP BY origin"))
        payload = await conn.fetchval("SELECT payload FROM dead_letters WHERE origin = 'database' LIMIT 1")
    assert origins == {"handler": rejects, "database": poisoned}
    assert json.loads(payload)["value"].endswith("\x00")


async def test_handler_failure_keeps_the_batches_committed_before_it(db: asyncpg.Pool) -> None:
    """A handler failing at batch 4 surfaces after batches 0–3 committed with their checkpoint."""
    with pytest.raises(ConnectionResetError):
        await run_pipeline(db, handler(10, 100, fail_at=4))
    rows, _, cursor = await counts(db)
    assert cursor == {"next_seq": 400}
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT max(seq) FROM synthetic_records") < 400
    assert rows > 0
