"""Memory stays flat: peak RSS after 1 M and after 5 M synthetic records streamed through prefetch +
write_batch + a checkpoint upsert per batch (goal: the two peaks about equal).

    .venv/bin/python bench/memory.py [--records 5000000] [--every 1000000] [--batch 5000]

Prints the current and peak RSS every ``--every`` records. Creates and drops its own database on
``BENCH_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
from typing import Any

from common import emit_result, temporary_database
from sink import CHECKPOINT_SQL, synthetic_batches, synthetic_stream

from batcher import sinks, store
from batcher.pipeline import prefetching

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process, in MiB."""
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[1]) * _PAGE
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return current / 2**20, peak / 2**20


async def main(records: int, every: int, batch_size: int) -> dict[str, Any]:
    stream = synthetic_stream("ignore")
    samples: list[dict[str, float]] = []
    async with temporary_database("batcher_bench_memory") as url:
        conn = await store.connect(url)
        try:
            done, next_mark = 0, every
            source = synthetic_batches(records, batch_size)
            async with prefetching(source, depth=2, max_bytes=64 << 20) as batches:
                async for batch in batches:
                    async with conn.transaction():
                        await sinks.write_batch(conn, stream, batch, job_name="bench", run_id=1)
                        await conn.execute(CHECKPOINT_SQL, "bench", stream.name, batch.checkpoint, 1)
                    done += len(batch.records)
                    if done >= next_mark or done == records:
                        current, peak = rss_mib()
                        samples.append({"records": done, "rss_mib": round(current, 1),
                                        "peak_rss_mib": round(peak, 1)})
                        print(f"{done:>10,} records  RSS {current:7.1f} MiB  peak {peak:7.1f} MiB",
                              flush=True)
                        next_mark += every
        finally:
            await conn.close()
    first, last = samples[0]["peak_rss_mib"], samples[-1]["peak_rss_mib"]
    print(f"peak RSS after {samples[0]['records']:,.0f}: {first} MiB; after {samples[-1]['records']:,.0f}: "
          f"{last} MiB (growth {last - first:+.1f} MiB)")
    emit_result(f"memory: peak RSS streaming {samples[-1]['records']:,} records through the pipeline", last, "MiB",
                baseline=first, baseline_label=f"after {samples[0]['records']:,}",
                goal="flat (≤ 1.1× the first peak)", met=last <= first * 1.1)
    return {"records": records, "samples": samples, "peak_growth_mib": round(last - first, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5_000_000)
    parser.add_argument("--every", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.records, min(args.every, args.records), args.batch))))
