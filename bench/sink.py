"""Sink throughput: synthetic records through prefetch + write_batch + a checkpoint upsert per batch, vs
raw asyncpg ``copy_records_to_table`` of the same rows into a same-shaped table (goal: ≥ 0.8× raw).

Also reports the replay case (every key already present) under ``ignore`` and ``update_if_changed``,
with each upsert strategy (session temp table, the default, and ``unnest``).

    .venv/bin/python bench/sink.py [--records 1000000] [--batch 5000] [--rounds 3]

Rounds interleave the raw and pipeline runs (in an order rotated per round, each from empty tables after
a CHECKPOINT, autovacuum off on both tables) and the median ratio is reported, since a shared machine's
load moves single runs by ±30 %.

Creates and drops its own database on ``BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

from common import emit_result, temporary_database

from batcher import sinks, store
from batcher.handler import Batch, ConflictPolicy, Stream
from batcher.pipeline import prefetching

BASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
COLUMNS = ("scope_key", "seq", "value", "amount", "attrs")
CHECKPOINT_SQL = """
INSERT INTO checkpoints (job_name, stream, scope_key, cursor, run_id) VALUES ($1, $2, '', $3, $4)
ON CONFLICT (job_name, stream, scope_key) DO UPDATE
SET cursor = EXCLUDED.cursor, run_id = EXCLUDED.run_id, updated_at = now()
"""


def synthetic_stream(conflict: ConflictPolicy) -> Stream:
    return Stream(name=f"bench_{conflict}", table="synthetic_records", key_columns=("scope_key", "seq"),
                  value_columns=("value", "amount", "attrs"), conflict=conflict,
                  bookkeeping_columns=("ingested_at",), json_columns=("attrs",))


async def synthetic_batches(records: int, batch_size: int, scope: str = "bench") -> AsyncIterator[Batch]:
    """Synthetic-shaped batches, like the synthetic handler's, with a checkpoint each."""
    for lo in range(0, records, batch_size):
        hi = min(lo + batch_size, records)
        rows = [(scope, n, f"v0-{n}", n, {"seed": 0, "n": n, "window": None}) for n in range(lo, hi)]
        yield Batch(stream="bench", records=rows, checkpoint={"next_seq": hi}, size_bytes=64 * len(rows))


async def through_pipeline(conn: Any, stream: Stream, records: int, batch_size: int) -> tuple[float, int]:
    """Prefetched batches, each in its own transaction: write_batch then the checkpoint upsert."""
    written = 0
    started = time.perf_counter()
    async with prefetching(synthetic_batches(records, batch_size), depth=2, max_bytes=64 << 20) as batches:
        async for batch in batches:
            async with conn.transaction():
                result = await sinks.write_batch(conn, stream, batch, job_name="bench", run_id=1)
                await conn.execute(CHECKPOINT_SQL, "bench", stream.name, batch.checkpoint, 1)
            written += result.written
    return time.perf_counter() - started, written


async def raw_copy(conn: Any, records: int, batch_size: int, *, prefetched: bool = False,
                   ) -> tuple[float, int]:
    """The baseline: the same batches, each one ``copy_records_to_table`` (autocommit).

    ``prefetched`` generates them through the same prefetch as the pipeline, so both overlap generation
    with the database's work and the ratio isolates the sink's own cost.
    """
    await fresh_tables(conn)
    started = time.perf_counter()
    source = synthetic_batches(records, batch_size)
    if prefetched:
        async with prefetching(source, depth=2, max_bytes=64 << 20) as batches:
            await copy_all(conn, batches)
    else:
        await copy_all(conn, source)
    return time.perf_counter() - started, records


async def fresh_tables(conn: Any) -> None:
    """Every timed new-rows run starts from the same state: empty tables, no dirty buffers."""
    await conn.execute("TRUNCATE synthetic_records, raw_records, checkpoints")
    await conn.execute("CHECKPOINT")


async def copy_all(conn: Any, batches: AsyncIterator[Batch]) -> None:
    async for batch in batches:
        await conn.copy_records_to_table("raw_records", records=batch.records, columns=list(COLUMNS))


async def timed(label: str, records: int, run: Callable[[], Awaitable[tuple[float, int]]]) -> float:
    seconds, written = await run()
    rate = records / seconds
    print(f"{label:<48} {seconds:7.2f} s  {rate:>10,.0f} rec/s  written {written:,}", flush=True)
    return rate


async def pipeline_new_rows(conn: Any, records: int, batch_size: int) -> tuple[float, int]:
    await fresh_tables(conn)
    return await through_pipeline(conn, synthetic_stream("ignore"), records, batch_size)


async def new_rows_round(conn: Any, records: int, batch_size: int, round_no: int) -> dict[str, float]:
    """One round of the new-rows comparison: raw, raw prefetched and pipeline, each on empty tables, in an
    order rotated from round to round (whatever the previous run left behind lands on each in turn)."""
    runs = [("raw", "raw COPY (baseline)", partial(raw_copy, conn, records, batch_size)),
            ("raw_prefetched", "raw COPY, prefetched source (baseline)",
             partial(raw_copy, conn, records, batch_size, prefetched=True)),
            ("pipeline", "pipeline, new rows", partial(pipeline_new_rows, conn, records, batch_size))]
    shift = round_no % len(runs)
    rates = {key: await timed(label, records, run) for key, label, run in runs[shift:] + runs[:shift]}
    return {**rates, "ratio": rates["pipeline"] / rates["raw"],
            "ratio_prefetched": rates["pipeline"] / rates["raw_prefetched"]}


async def replay_rates(conn: Any, records: int, batch_size: int, raw: float) -> dict[str, float]:
    """Every key already present: each conflict policy with each upsert strategy, as a ratio to raw."""
    ratios: dict[str, float] = {}
    for conflict in ("ignore", "update_if_changed"):
        for strategy in ("temp_table", "unnest"):
            sinks.postgres.UPSERT_STRATEGY = strategy  # type: ignore[assignment]
            sinks.reset_caches()
            await conn.execute("CHECKPOINT")
            replay = partial(through_pipeline, conn, synthetic_stream(conflict), records, batch_size)
            rate = await timed(f"pipeline, replay {conflict} ({strategy})", records, replay)
            ratios[f"{conflict}_{strategy}"] = round(rate / raw, 3)
    sinks.postgres.UPSERT_STRATEGY = "temp_table"
    return ratios


async def main(records: int, batch_size: int, rounds: int) -> dict[str, Any]:
    async with temporary_database("batcher_bench_sink") as url:
        conn = await store.connect(url)
        try:
            await conn.execute("CREATE TABLE raw_records (LIKE synthetic_records INCLUDING ALL)")
            # No autovacuum on the two tables: a million rows inserted start one, which would run (and
            # be timed) during the next run, whichever that is.
            for table in ("raw_records", "synthetic_records"):
                await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            runs = [await new_rows_round(conn, records, batch_size, n) for n in range(rounds)]
            raw = statistics.median(r["raw"] for r in runs)
            replay = await replay_rates(conn, records, batch_size, raw)
        finally:
            await conn.close()
    ratio = statistics.median(r["ratio"] for r in runs)
    ratio_prefetched = statistics.median(r["ratio_prefetched"] for r in runs)
    print(f"pipeline / raw COPY, new rows (median of {rounds}): {ratio:.2f}x; against the prefetched raw "
          f"COPY {ratio_prefetched:.2f}x (goal >= 0.8x); replay / raw: {replay}")
    pipeline_rate = statistics.median(r["pipeline"] for r in runs)
    spread = f"median of {rounds}; per round {min(r['ratio'] for r in runs):.2f}–{max(r['ratio'] for r in runs):.2f}×"
    emit_result(f"sink: {records:,} new records through prefetch + sink + checkpoint vs raw asyncpg COPY",
                pipeline_rate, "rec/s", baseline=raw, baseline_label="raw COPY", ratio=ratio, goal="≥ 0.8×",
                met=ratio >= 0.8, note=spread)
    emit_result("sink: same, vs a prefetched raw COPY", pipeline_rate, "rec/s",
                baseline=statistics.median(r["raw_prefetched"] for r in runs), baseline_label="prefetched raw COPY",
                ratio=ratio_prefetched, goal="≥ 0.8×", met=ratio_prefetched >= 0.8)
    emit_result("sink: replay of every key (ignore, temp table upsert) vs raw COPY", None, "rec/s",
                ratio=replay["ignore_temp_table"], goal="—", met=None,
                note="update_if_changed: " + f"{replay['update_if_changed_temp_table']:.2f}×")
    return {"records": records, "batch": batch_size, "rounds": [{k: round(v, 3) for k, v in r.items()}
                                                                for r in runs],
            "ratio_new_vs_raw": round(ratio, 3), "ratio_new_vs_raw_prefetched": round(ratio_prefetched, 3),
            "ratio_replay_vs_raw": replay}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3, help="new-rows rounds (the median ratio is printed)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.records, args.batch, args.rounds))))
