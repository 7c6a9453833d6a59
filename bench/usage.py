"""Usage aggregation: ``batcher aggregate`` vs the original per-key approach, 50,000 keys (goal ≥ 10×).

Both sides are timed as whole processes (interpreter start-up, imports and connections included):

- **baseline** — the original job: ``SCAN`` the keys of the date, then for every key one ``GET`` and one
  ``INSERT … ON CONFLICT DO UPDATE`` round trip (this script re-run with ``--baseline``);
- **batcher** — ``python -m batcher aggregate --date D`` with a one-job TOML: one SCAN pass, pipelined
  MGET, COPY/upsert batches with checkpoints through the real runner (a run row, fenced commits).

Also timed: a batcher rerun with unchanged counters (every key conflicts; nothing is written) and one
after every counter moved (every row updated). Each result is checked against Redis.

    .venv/bin/python bench/usage.py [--keys 50000]

Measured here (50,000 keys): baseline 126 s (one fsynced INSERT per key), batcher aggregate 2.3 s wall
(1.8 s run) — 56×; reruns: unchanged 1.8 s, every counter moved 3.3 s.

Creates and drops its own database on ``BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) and claims a free Redis db among 1–9 on
``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379``) with the tests' ``SET lock NX PX`` scheme,
renewing the lock while it runs and emptying the db when done.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis
from common import claimed_redis_db, emit_result, temporary_database

BASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
REPO = Path(__file__).resolve().parent.parent
DAY = dt.date(2025, 11, 1)
METRICS = ("queries", "documents", "tokens", "api_calls", "storage_mb")
UPSERT = """
INSERT INTO merchant_usage (merchant_id, usage_date, metric_type, value, aggregated_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (merchant_id, usage_date, metric_type) DO UPDATE SET value = EXCLUDED.value, aggregated_at = now()
"""


def seed(client: redis.Redis, keys: int, bump: int = 0) -> dict[tuple[str, str], int]:
    """``keys`` counters of DAY (merchants × 5 metrics) plus as many of the day before (not aggregated)."""
    expected = {}
    pipe = client.pipeline(transaction=False)
    for n in range(keys):
        merchant, metric = f"merchant_{n // len(METRICS):06d}", METRICS[n % len(METRICS)]
        pipe.set(f"usage:{merchant}:{DAY.isoformat()}:{metric}", n + bump)
        pipe.set(f"usage:{merchant}:{(DAY - dt.timedelta(days=1)).isoformat()}:{metric}", n)
        expected[(merchant, metric)] = n + bump
        if len(pipe) >= 10_000:
            pipe.execute()
    pipe.execute()
    return expected


async def baseline(database_url: str, redis_url: str) -> None:
    """The original job: SCAN, then one GET and one INSERT … ON CONFLICT round trip per key."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    conn = await asyncpg.connect(database_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"usage:*:{DAY.isoformat()}:*", count=1000)]
        for key in keys:
            _, merchant, day, metric = key.split(":")
            value = await client.get(key)
            await conn.execute(UPSERT, merchant, dt.date.fromisoformat(day), metric, int(value))
    finally:
        await conn.close()
        await client.aclose()


def timed_process(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall time of ``python ARGS`` and its last stdout line; a failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return elapsed, lines[-1] if lines else ""


async def stored(database_url: str) -> dict[tuple[str, str], int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT merchant_id, metric_type, value FROM merchant_usage WHERE usage_date = $1",
                                DAY)
    finally:
        await conn.close()
    return {(r[0], r[1]): r[2] for r in rows}


async def truncate(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE merchant_usage")
    finally:
        await conn.close()


async def run(keys: int) -> dict[str, Any]:
    with claimed_redis_db() as redis_url, tempfile.TemporaryDirectory() as tmp:
        client = redis.Redis.from_url(redis_url)
        expected = seed(client, keys)
        async with temporary_database("bench_usage") as database_url:
            config = Path(tmp) / "batcher.toml"
            config.write_text('[jobs.usage]\ntype = "usage_aggregation"\ninterval_minutes = 60\n')
            env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHER_")}
            env.update(BATCHER_DATABASE_URL=database_url, BATCHER_REDIS_URL=redis_url, BATCHER_CONFIG=str(config),
                       BATCHER_DATA_DIR=tmp, BATCHER_API_PORT="0", BATCHER_LOG_LEVEL="warning")
            results: dict[str, Any] = {"keys": keys}
            results["baseline_s"], _ = timed_process([__file__, "--baseline", database_url, redis_url], env)
            assert await stored(database_url) == expected, "baseline result differs from Redis"
            await truncate(database_url)
            timed_process(["-m", "batcher", "jobs", "sync"], env)  # as a daemon's start: aggregate never syncs
            aggregate = ["-m", "batcher", "aggregate", "--date", DAY.isoformat()]
            results["batcher_s"], summary = timed_process(aggregate, env)
            assert await stored(database_url) == expected, "batcher result differs from Redis"
            results["batcher_run_ms"] = json.loads(summary)["runtime_ms"]
            results["batcher_rerun_unchanged_s"], _ = timed_process(aggregate, env)
            expected = seed(client, keys, bump=1)
            results["batcher_rerun_all_changed_s"], _ = timed_process(aggregate, env)
            assert await stored(database_url) == expected, "batcher rerun differs from Redis"
            client.close()
    results["speedup"] = round(results["baseline_s"] / results["batcher_s"], 1)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--baseline", nargs=2, metavar=("DATABASE_URL", "REDIS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        asyncio.run(baseline(*args.baseline))
        return
    results = asyncio.run(run(args.keys))
    for key, value in results.items():
        print(f"{key:>30}: {value}")
    verdict = "meets" if results["speedup"] >= 10 else "MISSES"
    print(f"batcher aggregate is {results['speedup']}× the per-key baseline ({verdict} the ≥ 10× goal)")
    emit_result(f"usage: batcher aggregate of {results['keys']:,} Redis keys vs per-key GET + INSERT",
                results["batcher_s"], "s", baseline=results["baseline_s"], baseline_label="per-key loop",
                goal="≤ 0.1× (≥ 10× faster)", met=results["speedup"] >= 10,
                note=f"{results['speedup']}× faster; CLI start-up included")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
