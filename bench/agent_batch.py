"""Agent batch throughput: N individual items against the fake processing service at a fixed latency,
with bounded concurrency, through the real runner (validation per chunk, results and context committed
per chunk). Goal: wall time within 1.2× of items × latency ÷ concurrency.

    .venv/bin/python bench/agent_batch.py [--items 10000] [--latency-ms 50] [--concurrency 32] [--chunk 200]

The fake runs in its own process (as the service would); the run is ``batcher.testing.run_job_once``.
Prints a JSON line with the wall time, the ideal, and their ratio, and — the baseline in the same run —
plain aiohttp sending the same requests with the same concurrency to the same fake (no validation, no
database, no rate-limit check): on a loaded machine the baseline itself can miss the 1.2× goal, and the
ratio of the two is the handler's own cost (``cpu_ms_per_item``: this process's CPU per item, run vs
baseline, which machine load does not move). Exits 1 when the run did not succeed. Creates and drops its
own database and uses a claimed Redis db.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
from common import claimed_redis_db, emit_result, temporary_database

from batcher.testing import run_job_once, test_settings

KEY = "bench-key"
REPO = Path(__file__).resolve().parents[1]


async def baseline(url: str, items: int, concurrency: int) -> float:
    """Seconds plain aiohttp takes for the same requests (one session, a semaphore)."""
    slots = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> None:
            body = {"template": "default", "input": {"key": f"baseline:{i}"}}
            async with slots, session.post(url + "/requests", json=body,
                                           headers={"Authorization": f"Bearer {KEY}"}) as answer:
                await answer.json()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(items)))
        return time.perf_counter() - started


def start_fake(latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    fake = subprocess.Popen([sys.executable, "-m", "batcher.fakes.agent", "--options",
                             json.dumps({"api_key": KEY, "latency_ms": latency_ms})],
                            cwd=REPO, stdout=subprocess.PIPE, start_new_session=True)
    assert fake.stdout is not None
    return fake, json.loads(fake.stdout.readline())["url"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bench(url: str, items: int, latency_ms: float, concurrency: int, chunk: int) -> dict[str, object]:
    cpu = cpu_seconds()
    plain = await baseline(url, items, concurrency)
    plain_cpu = cpu_seconds() - cpu
    async with temporary_database("bench_agent") as database_url:
        conn = await asyncpg.connect(database_url)
        await conn.executemany("INSERT INTO system_users (user_id, tenant_id) VALUES ($1, $2)",
                               [(f"user{i:06d}", f"t{i % 7}") for i in range(items)])
        await conn.close()
        with claimed_redis_db() as redis_url:
            settings = test_settings(database_url, redis_url, lease_seconds=30)
            params = {"base_url": url, "batch_type": "INDIVIDUAL_USERS", "concurrency": concurrency,
                      "chunk_size": chunk}
            started, cpu = time.perf_counter(), cpu_seconds()
            summary = await run_job_once(settings, "agent_batch", params, literal_secrets={"api_key": KEY})
            wall, run_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    ideal = items * latency_ms / 1000 / concurrency
    return {"items": items, "latency_ms": latency_ms, "concurrency": concurrency, "chunk_size": chunk,
            "status": summary["status"], "records": summary.get("records"), "wall_s": round(wall, 2),
            "runtime_s": round(summary.get("runtime_ms", 0) / 1000, 2), "ideal_s": round(ideal, 2),
            "ratio": round(wall / ideal, 3), "goal": 1.2, "goal_met": wall / ideal <= 1.2,
            "baseline_s": round(plain, 2), "baseline_ratio": round(plain / ideal, 3),
            "vs_baseline": round(wall / plain, 3), "cpu_ms_per_item": round(1000 * run_cpu / items, 3),
            "baseline_cpu_ms_per_item": round(1000 * plain_cpu / items, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=200)
    args = parser.parse_args()
    fake, url = start_fake(args.latency_ms)
    try:
        result = asyncio.run(bench(url, args.items, args.latency_ms, args.concurrency, args.chunk))
    finally:
        fake.terminate()
        fake.wait(10)
    print(json.dumps(result))
    emit_result(f"agent batch: {args.items:,} individual items at {args.latency_ms:g} ms, concurrency "
                f"{args.concurrency}", result["wall_s"], "s", baseline=result["ideal_s"],
                baseline_label="items × latency ÷ concurrency", goal="≤ 1.2×", met=result["goal_met"],
                note=f"plain aiohttp in the same run {result['baseline_ratio']}× ideal; CPU "
                     f"{result['cpu_ms_per_item']} ms per item")
    if result["status"] != "succeeded":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
