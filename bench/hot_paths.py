"""Hot paths that grow with history (issue 14): claim, the runs API page, a metrics scrape and the
dependency check, on a database with 1,000,000 runs (100,000 of them queued) and 100,000 dead letters.

The rows are spread over 1,000 jobs (``INSERT … SELECT generate_series``): finished history with realistic
statuses (succeeded, some failed with a retry run pointing at them via ``retry_of``, skipped, cancelled),
100 running runs, then 100,000 queued runs (manual, backfill, dependency; a seventh with a higher priority; 5 %
not due for an hour and 2 % of a cli chain, spread over every job). A third of the dead letters are resolved.
(A claim reads past a job's queued runs that are not due yet, one by one: a job whose whole queue waits
costs a scan of that queue.)

Each statement is timed (p50 / p99 over up to ``--iterations`` executions, at most ``--budget`` seconds
each) twice: the baseline — the statements as they were before issue 14, kept here as text, on the schema
without migration 0007's (and 0015's) indexes — then the current code (store.Q and the query the code
picks) after 0007's and 0015's indexes are built. Both under PostgreSQL's default plan choice (``auto``:
asyncpg prepares the statements, so after 5 executions a generic plan may be chosen) and with
``plan_cache_mode = force_generic_plan`` (the worst case). Claims run inside a transaction that is rolled back, so every
iteration sees the same state. Goal: every current p99 under 50 ms.

    .venv/bin/python bench/hot_paths.py [--runs 1000000] [--iterations 100] [--budget 2.5]

Creates and drops its own database on ``BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). About 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
from common import emit_result, temporary_database

from batcher import commands, store
from batcher.store import Q
from batcher.worker import LOCK_CLASS

JOBS = 1000
GOAL_MS = 50.0

# The statements as they were before issue 14 (the baseline).
OLD = {
    "claim_runs": """
WITH ranked AS (
    SELECT r.job_name,
           max(r.priority + $5::float8 * extract(epoch FROM now() - r.queued_at) / 60) AS score
    FROM batch_runs r
    WHERE r.status = 'queued' AND r.not_before <= now() AND r.root_trigger <> 'cli'
    GROUP BY r.job_name
), jobs AS (
    SELECT c.job_name, ranked.score FROM batch_config c JOIN ranked USING (job_name)
    WHERE NOT c.paused AND ($4::text[] IS NULL OR c.queue = ANY($4::text[]))
      AND NOT EXISTS (SELECT 1 FROM batch_runs x WHERE x.job_name = c.job_name AND x.status = 'running')
    ORDER BY ranked.score DESC, c.job_name
    LIMIT $2
    FOR UPDATE OF c SKIP LOCKED
), best AS (
    SELECT DISTINCT ON (r.job_name) r.id
    FROM batch_runs r JOIN jobs USING (job_name)
    WHERE r.status = 'queued' AND r.not_before <= now() AND r.root_trigger <> 'cli'
    ORDER BY r.job_name, r.priority + $5::float8 * extract(epoch FROM now() - r.queued_at) / 60 DESC, r.id
), locked AS (
    SELECT r.id FROM batch_runs r WHERE r.id IN (SELECT id FROM best) AND r.status = 'queued'
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE batch_runs r SET status = 'running', worker_id = $1, claim_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $3), started_at = now()
FROM locked WHERE r.id = locked.id
RETURNING r.*""",
    "page_runs": """
SELECT * FROM batch_runs
WHERE ($1::text IS NULL OR job_name = $1) AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR queued_at >= $3) AND ($5::bigint IS NULL OR id < $5)
ORDER BY id DESC LIMIT $4""",
    "metrics_jobs": """
SELECT c.job_name, c.queue, c.last_success_at,
       (SELECT count(*) FROM batch_runs r WHERE r.job_name = c.job_name AND r.status = 'queued'
          AND r.not_before <= now()) AS queued,
       (SELECT count(*) FROM batch_runs r WHERE r.job_name = c.job_name AND r.status = 'running') AS running,
       (SELECT count(*) FROM dead_letters d WHERE d.job_name = c.job_name AND d.resolved_at IS NULL)
           AS dead_letters
FROM batch_config c""",
    "dependencies_satisfied": """
SELECT coalesce(bool_and(d.last_success_at IS NOT NULL AND d.last_success_at > coalesce(
           (SELECT max(r.queued_at) FROM batch_runs r WHERE r.job_name = $1 AND r.trigger <> 'retry'),
           '-infinity'::timestamptz)), false)
FROM batch_config d WHERE d.job_name = ANY($2::text[])""",
}
# The schema before 0007: its indexes (and 0015's) dropped, the one it replaces restored.
BASELINE_SCHEMA = """
DROP INDEX IF EXISTS batch_runs_claimable, batch_runs_claimable_by_id, batch_runs_status_recent,
    batch_runs_dependency_mark, dead_letters_unresolved, batch_runs_claim_order, batch_runs_claim_order_by_name;
CREATE INDEX IF NOT EXISTS batch_runs_queued ON batch_runs (job_name, priority DESC, queued_at)
    WHERE status = 'queued';
"""

LOAD = """
INSERT INTO batch_config (job_name, job_type, queue, depends_on, last_success_at)
SELECT format('job_%s', lpad(j::text, 3, '0')), 'synthetic', CASE WHEN j % 4 = 0 THEN 'slow' ELSE 'default' END,
       CASE WHEN j % 10 = 1 THEN ARRAY[format('job_%s', lpad((j - 1)::text, 3, '0'))] ELSE '{}' END,
       now() - make_interval(secs => j)
FROM generate_series(0, 999) j
WHERE $1::bigint IS NOT NULL AND $2::bigint IS NOT NULL AND $3::bigint IS NOT NULL;

-- history: run i is job i % 1000, generation g = i / 1000; a failed run's next run of the job retries it
INSERT INTO batch_runs (job_name, job_type, trigger, scheduled_for, queued_at, not_before, status, reason,
                        retry_of, root_trigger, started_at, finished_at, runtime_ms, records, worker_id)
SELECT format('job_%s', lpad((i % 1000)::text, 3, '0')), 'synthetic', t.trigger,
       CASE WHEN t.trigger = 'schedule' THEN q.at END, q.at, q.at, s.status,
       CASE WHEN s.status = 'skipped' THEN 'overlap' END,
       CASE WHEN t.trigger = 'retry' THEN i - 1000 END,
       CASE WHEN t.trigger = 'retry' THEN 'schedule' ELSE t.trigger END,
       CASE WHEN s.status <> 'skipped' THEN q.at + interval '1 second' END,
       CASE WHEN s.status <> 'running' THEN q.at + interval '5 seconds' END,
       CASE WHEN s.status IN ('succeeded', 'failed') THEN 4000 END, 100,
       CASE WHEN s.status = 'running' THEN 'bench-worker' END
FROM generate_series(1, $1::bigint) i, (SELECT $3::bigint) unused
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => ($2::bigint - i) * 10) AS at,
                           (i / 1000 + i % 1000) % 37 AS f) q
CROSS JOIN LATERAL (SELECT CASE WHEN i > 1000 AND (q.f + 36) % 37 = 0 THEN 'retry' ELSE 'schedule' END
                    AS trigger) t
CROSS JOIN LATERAL (SELECT CASE WHEN i > $1 - 100 THEN 'running' WHEN q.f = 0 THEN 'failed'
                                WHEN i % 97 = 0 THEN 'skipped' WHEN i % 331 = 0 THEN 'cancelled'
                                ELSE 'succeeded' END AS status) s
ORDER BY i;

-- the queue: the newest runs, all queued
INSERT INTO batch_runs (job_name, job_type, trigger, queued_at, not_before, priority, root_trigger)
SELECT format('job_%s', lpad((i % 1000)::text, 3, '0')), 'synthetic', t.trigger,
       now() - make_interval(secs => ($2::bigint - i)),
       CASE WHEN (i / 1000) % 20 = 0 THEN now() + interval '1 hour'
            ELSE now() - make_interval(secs => ($2::bigint - i)) END,
       CASE WHEN i % 7 = 0 THEN 5 ELSE 0 END,
       CASE WHEN (i / 1000) % 50 = 7 THEN 'cli' ELSE t.trigger END
FROM generate_series($1::bigint + 1, $2::bigint) i, (SELECT $3::bigint) unused
CROSS JOIN LATERAL (SELECT (ARRAY['manual', 'backfill', 'dependency'])[1 + i % 3] AS trigger) t
ORDER BY i;

INSERT INTO dead_letters (job_name, run_id, stream, origin, reason, payload, payload_hash, resolved_at)
SELECT format('job_%s', lpad((i % 1000)::text, 3, '0')), i, 'records', 'handler', 'invalid', '{}', md5(i::text),
       CASE WHEN i % 3 = 0 THEN now() - interval '1 day' END
FROM generate_series(1, $3::bigint) i
WHERE $1::bigint IS NOT NULL AND $2::bigint IS NOT NULL;
"""


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


async def timed(call: Callable[[], Awaitable[Any]], iterations: int, budget: float) -> dict[str, float]:
    """p50 / p99 in ms of ``call`` (at least 10 executions, then up to ``iterations`` within ``budget``)."""
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while len(samples) < iterations and (len(samples) < 10 or time.perf_counter() < deadline):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return {"p50": round(percentile(samples, 50), 2), "p99": round(percentile(samples, 99), 2), "n": len(samples)}


def claim(conn: asyncpg.Connection, sql: str) -> Callable[[], Awaitable[Any]]:
    async def run() -> None:
        tr = conn.transaction()
        await tr.start()
        try:
            rows = await conn.fetch(sql, "bench-claim", 8, 60.0, None, 1.0)
            assert len(rows) == 8, len(rows)
        finally:
            await tr.rollback()
    return run


PAGES: dict[str, dict[str, Any]] = {  # what GET /api/runs asks for (limit 20 → 21 rows fetched)
    "page": {},
    "page job": {"job": "job_500"},
    "page job cursor": {"job": "job_500", "cursor": 600_000},
    "page status=failed": {"status": "failed"},
    "page status=running": {"status": "running"},
    "page job status": {"job": "job_500", "status": "succeeded"},
    "page since 1 day": {"since": timedelta(days=1)},
}


def page(conn: asyncpg.Connection, now: Any, filters: dict[str, Any], *,
         baseline: bool) -> Callable[[], Awaitable[Any]]:
    job, status, cursor = filters.get("job"), filters.get("status"), filters.get("cursor")
    since = now - filters["since"] if "since" in filters else None

    async def run() -> None:
        if baseline:
            await conn.fetch(OLD["page_runs"], job, status, since, 21, cursor)
        else:
            await commands.page_runs(conn, job=job, status=status, since=since, limit=20, cursor=cursor)
    return run


def scrape(conn: asyncpg.Connection, sql: str) -> Callable[[], Awaitable[Any]]:
    async def run() -> None:
        upto = await conn.fetchval(Q["metrics_watermark"], 10.0)
        await conn.fetch(Q["metrics_finished_runs"], upto - timedelta(seconds=15), upto)
        await conn.fetch(sql)
        await conn.fetchval(Q["live_workers"], LOCK_CLASS)
    return run


def deps(conn: asyncpg.Connection, sql: str) -> Callable[[], Awaitable[Any]]:
    state = {"n": 0}

    async def run() -> None:
        j = 1 + 10 * (state["n"] % 100)
        state["n"] += 1
        await conn.fetchval(sql, f"job_{j:03d}", [f"job_{j - 1:03d}"])
    return run


async def measure(url: str, *, baseline: bool, iterations: int, budget: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for mode in ("auto", "force_generic_plan"):
        conn = await store.connect(url)
        try:
            await conn.execute(f"SET plan_cache_mode = {mode}")
            if baseline:  # before issue 14 the connections left JIT at the server's default (on)
                await conn.execute("SET jit = on")
            now = await conn.fetchval("SELECT now()")
            cases: dict[str, Callable[[], Awaitable[Any]]] = {
                "claim": claim(conn, OLD["claim_runs"] if baseline else Q["claim_runs"]),
                **{name: page(conn, now, f, baseline=baseline) for name, f in PAGES.items()},
                "metrics scrape": scrape(conn, OLD["metrics_jobs"] if baseline else Q["metrics_jobs"]),
                "dependencies_satisfied": deps(conn, OLD["dependencies_satisfied"] if baseline
                                               else Q["dependencies_satisfied"]),
            }
            for name, call in cases.items():
                figures = await timed(call, iterations, budget)
                out.setdefault(name, {})[mode] = figures
                print(f"  {'baseline' if baseline else 'current '} {mode:<18} {name:<24} "
                      f"p50 {figures['p50']:8.2f} ms  p99 {figures['p99']:8.2f} ms  (n={figures['n']})", flush=True)
        finally:
            await conn.close()
    return out


async def load(conn: asyncpg.Connection, runs: int, queued: int, dead: int) -> None:
    started = time.perf_counter()
    await conn.execute(BASELINE_SCHEMA)
    history = runs - queued
    for statement in LOAD.split(";\n\n"):
        await conn.execute(statement, history, runs, dead)  # every statement names $1, $2 and $3
    await conn.execute("VACUUM ANALYZE batch_runs, batch_config, dead_letters")
    print(f"loaded {runs:,} runs ({queued:,} queued) and {dead:,} dead letters over {JOBS} jobs "
          f"in {time.perf_counter() - started:.1f} s", flush=True)


async def main(runs: int, queued: int, dead: int, iterations: int, budget: float) -> dict[str, Any]:
    migrations = [next(store.MIGRATIONS_DIR.glob(f"{n:04d}_*.sql")) for n in (7, 15)]
    async with temporary_database("batcher_bench_hot") as url:
        conn = await store.connect(url)
        try:
            await load(conn, runs, queued, dead)
            before = await measure(url, baseline=True, iterations=iterations, budget=budget)
            started = time.perf_counter()
            for migration in migrations:
                await conn.execute(migration.read_text())
            await conn.execute("VACUUM ANALYZE batch_runs, dead_letters")
            print(f"{', '.join(m.name for m in migrations)} applied in {time.perf_counter() - started:.1f} s",
                  flush=True)
            after = await measure(url, baseline=False, iterations=iterations, budget=budget)
        finally:
            await conn.close()
    print(f"\n{'statement':<24} {'plan':<18} {'p50 before → after':>26} {'p99 before → after':>26} {'p99 ×':>7}")
    worst = 0.0
    for name, modes in after.items():
        for mode, now in modes.items():
            was = before[name][mode]
            worst = max(worst, now["p99"])
            print(f"{name:<24} {mode:<18} {was['p50']:>11.2f} → {now['p50']:>8.2f} ms "
                  f"{was['p99']:>11.2f} → {now['p99']:>8.2f} ms {was['p99'] / max(now['p99'], 0.01):>6.1f}×")
    print(f"worst current p99: {worst:.2f} ms (goal < {GOAL_MS:.0f} ms): {'ok' if worst < GOAL_MS else 'MISSED'}")
    for name, modes in after.items():
        now, was = modes["auto"], before[name]["auto"]
        emit_result(f"hot paths at {runs:,} runs: {name} p99", now["p99"], "ms", baseline=was["p99"],
                    baseline_label="before issue 14", goal=f"p99 < {GOAL_MS:.0f} ms", met=now["p99"] < GOAL_MS,
                    note=f"p50 {was['p50']:.1f} → {now['p50']:.1f} ms")
    return {"runs": runs, "queued": queued, "dead_letters": dead, "before": before, "after": after,
            "worst_p99_ms": worst}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--dead-letters", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--budget", type=float, default=2.5, help="seconds per statement and plan mode")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.runs, args.queued, args.dead_letters, args.iterations, args.budget))))
