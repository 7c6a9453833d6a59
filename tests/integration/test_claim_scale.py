"""The run claim at 100,000 jobs (issue 20): claim_runs walks each priority level of the queue in score order
and stops once it has found enough claimable jobs, so its cost follows the free slots, not the number of jobs
with a queued run — and it still claims exactly what a scan of the whole queue ranks best (randomized queues:
ties, levels, jobs with many runs, unclaimable jobs, queue filters).

Claims run in a transaction that is rolled back; reads are counted under a generic plan (see test_hot_paths).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from batcher.store import Q
from tests.integration.test_hot_paths import FULL_SCAN_BEST, rows_read


async def claim(conn: Any, slots: int, aging: float, queues: list[str] | None = None) -> set[int]:
    """The runs one claim takes (rolled back)."""
    tr = conn.transaction()
    await tr.start()
    try:
        return {r["id"] for r in await conn.fetch(Q["claim_runs"], "w1", slots, 60.0, queues, aging)}
    finally:
        await tr.rollback()


async def random_queue(conn: Any, rng: random.Random) -> None:
    """A random queue: 3–250 jobs in queues a/b, a few paused; per job 0–60 queued runs over priority levels
    -2…7, queued at a handful of instants (many ties: a materialize pass queues its runs in one instant), some
    not due or of a cli chain, some jobs with a running run; inserted in random order (ids follow neither
    job names nor queue times)."""
    base = datetime.now(UTC) - timedelta(hours=2)
    jobs = [f"j{n:03d}" for n in rng.sample(range(1000), rng.choice((3, 12, 60, 250)))]
    await conn.executemany(
        "INSERT INTO batch_config (job_name, job_type, queue, paused) VALUES ($1, 'synthetic', $2, $3)",
        [(j, rng.choice("ab"), rng.random() < 0.06) for j in jobs])
    levels = rng.choice(((0,), (0, 5), (-2, 0, 3, 7)))
    instants = [base + timedelta(minutes=rng.randrange(90)) for _ in range(rng.choice((1, 4, 30)))]
    rows = []
    for job in jobs:
        many = rng.random() < 0.1
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3)) if not many else rng.randrange(20, 60)):
            rows.append((job, rng.choice(levels), rng.choice(instants) if rng.random() < 0.8
                         else base + timedelta(seconds=rng.randrange(6000)),
                         timedelta(hours=1 if rng.random() < 0.1 else -1), "cli" if rng.random() < 0.05 else "manual",
                         "queued"))
        if rng.random() < 0.08:
            rows.append((job, 0, base, timedelta(hours=-1), "manual", "running"))
    rng.shuffle(rows)
    await conn.executemany("""
        INSERT INTO batch_runs (job_name, job_type, trigger, priority, queued_at, not_before, root_trigger, status)
        VALUES ($1, 'synthetic', 'manual', $2, $3, now() + $4::interval, $5, $6)""", rows)
    await conn.execute("ANALYZE batch_config, batch_runs")


async def test_claim_runs_picks_what_a_full_scan_picks_on_random_queues(db: Any) -> None:
    """On 40 random queues (see ``random_queue``), for aging 0, 0.25, 1 and 40 points a minute, 1–40 free slots
    and every queue filter, the claim takes exactly the runs a full scan of the queue ranks best."""
    async with db.acquire() as conn:
        for seed in range(40):
            rng = random.Random(seed)
            await conn.execute("TRUNCATE batch_runs, batch_config RESTART IDENTITY CASCADE")
            await random_queue(conn, rng)
            for aging in (0.0, 0.25, 1.0, 40.0):
                for slots in (1, 3, 8, 40):
                    queues = rng.choice((None, None, ["a"], ["b", "c"]))
                    expected = {r["id"] for r in await conn.fetch(FULL_SCAN_BEST, slots, aging, queues)}
                    assert await claim(conn, slots, aging, queues) == expected, (seed, aging, slots, queues)


async def test_claim_runs_reads_the_free_slots_not_every_job_with_a_queued_run(db: Any) -> None:
    """A backlog: 3,000 jobs each with a queued run (issue 20: at 17,000 such jobs a claim took 300 ms and the
    backlog grew with it). A claim of 8 slots reads a bounded number of rows — not one per job with a queued
    run — with aging or without, and takes the 8 oldest runs (with aging) or the 8 first job names."""
    async with db.acquire() as conn:
        await conn.execute("""
            INSERT INTO batch_config (job_name, job_type) SELECT format('job_%s', lpad(j::text, 4, '0')), 'synthetic'
            FROM generate_series(0, 2999) j""")
        await conn.execute("""
            INSERT INTO batch_runs (job_name, job_type, trigger, root_trigger, queued_at)
            SELECT format('job_%s', lpad(j::text, 4, '0')), 'synthetic', 'schedule', 'schedule',
                   now() - make_interval(secs => j)
            FROM generate_series(0, 2999) j ORDER BY random()""")
        await conn.execute("ANALYZE batch_config, batch_runs")
        reads: dict[tuple[float, str], int] = {}
        claimed: dict[float, list[str]] = {}
        for aging in (0.0, 1.0):
            args = ("w1", 8, 60.0, None, aging)
            for table in ("batch_config", "batch_runs"):
                tr = conn.transaction()
                await tr.start()
                try:
                    reads[(aging, table)] = await rows_read(conn, Q["claim_runs"], args, table)
                finally:
                    await tr.rollback()
            ids = await claim(conn, 8, aging)
            claimed[aging] = sorted(r["job_name"] for r in await conn.fetch(
                "SELECT job_name FROM batch_runs WHERE id = ANY($1::bigint[])", list(ids)))
    assert claimed[0.0] == [f"job_{j:04d}" for j in range(8)]
    assert claimed[1.0] == [f"job_{j:04d}" for j in range(2992, 3000)]
    assert max(reads.values()) <= 200, f"claim read {reads} rows (aging, table) with 3,000 jobs queued"
