"""Hot paths that grow with history (issue 14) or with the number of jobs (issue 20): claim, the runs page, the
metrics scrape, the dependency check, the loop's sleep query and the dependents lookup read a bounded number
of rows however long the history or the queue is.

Each test fills the tables with a few thousand rows (``generate_series``), ANALYZEs them, and counts the rows
a statement reads from a table with ``EXPLAIN (ANALYZE, FORMAT JSON)`` of a prepared statement under
``plan_cache_mode = force_generic_plan`` — the plan asyncpg's prepared statements may settle on after five
executions, and the worst case. Claims run in a transaction that is rolled back. bench/hot_paths.py measures
the same statements' latency at 1,000,000 runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from batcher import commands
from batcher.metrics import DatabaseMetrics
from batcher.store import Q

JOBS = 10
PER_JOB = 1000


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]::text[]"
    return repr(value)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def rows_read(conn: Any, sql: str, args: tuple[Any, ...], table: str) -> int:
    """Rows the statement reads from ``table`` (returned or filtered out, every loop) under a generic plan."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        await conn.execute(f"PREPARE hot AS {sql}")
        params = f"({', '.join(_literal(a) for a in args)})" if args else ""
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE hot{params}")
    finally:
        await conn.execute("DEALLOCATE hot")
        await conn.execute("RESET plan_cache_mode")
    return sum(round((n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"])
               for n in _nodes(plan[0]["Plan"]) if n.get("Relation Name") == table)


async def add_jobs(conn: Any, jobs: int = JOBS) -> None:
    await conn.execute("""
        INSERT INTO batch_config (job_name, job_type, depends_on, last_success_at)
        SELECT format('job_%s', j), 'synthetic', CASE WHEN j = 1 THEN ARRAY['job_0'] ELSE '{}' END, now()
        FROM generate_series(0, $1::int - 1) j""", jobs)


async def add_history(conn: Any, jobs: int = JOBS, per_job: int = PER_JOB) -> None:
    """``per_job`` finished runs per job, oldest first: mostly succeeded, a few failed (each retried by the
    job's next run) and a few cancelled."""
    await conn.execute("""
        INSERT INTO batch_runs (job_name, job_type, trigger, queued_at, status, retry_of, root_trigger,
                                started_at, finished_at)
        SELECT format('job_%s', i % $1), 'synthetic', CASE WHEN i > $1 AND (i - $1) % 97 = 0 THEN 'retry'
               ELSE 'manual' END, now() - make_interval(secs => $2 - i), CASE WHEN i % 97 = 0 THEN 'failed'
               WHEN i % 331 = 0 THEN 'cancelled' ELSE 'succeeded' END,
               CASE WHEN i > $1 AND (i - $1) % 97 = 0 THEN i - $1 END, 'manual', now(), now()
        FROM generate_series(1, $2::int) i ORDER BY i""", jobs, jobs * per_job)
    await conn.execute("ANALYZE batch_runs")


async def test_claim_runs_reads_the_best_run_per_job_and_priority_not_the_whole_queue(db: Any) -> None:
    """With 10,000 queued runs over 10 jobs (two priority levels each), one claim reads a few rows per job
    and priority level — not every queued run — with aging or without, and without aging claims each job's
    top priority's lowest id."""
    async with db.acquire() as conn:
        await add_jobs(conn)
        await conn.execute("""
            INSERT INTO batch_runs (job_name, job_type, trigger, queued_at, priority, root_trigger)
            SELECT format('job_%s', i % $1), 'synthetic', 'manual', now() - make_interval(secs => $2 - i),
                   CASE WHEN (i / $1) % 2 = 0 THEN 5 ELSE 0 END, 'manual'
            FROM generate_series(1, $2::int) i ORDER BY i""", JOBS, JOBS * PER_JOB)
        await conn.execute("ANALYZE batch_runs")
        expected = await conn.fetch("""
            SELECT DISTINCT ON (job_name) id FROM batch_runs WHERE status = 'queued'
            ORDER BY job_name, priority DESC, id""")
        reads = {}
        for aging in (0.0, 1.0):
            args = ("w1", JOBS, 60.0, None, aging)
            for measure in (True, False):  # each claim rolled back
                tr = conn.transaction()
                await tr.start()
                try:
                    if measure:
                        reads[aging] = await rows_read(conn, Q["claim_runs"], args, "batch_runs")
                    elif aging == 0.0:
                        claimed = await conn.fetch(Q["claim_runs"], *args)
                finally:
                    await tr.rollback()
    assert sorted(r["id"] for r in claimed) == sorted(r["id"] for r in expected)
    assert max(reads.values()) <= 20 * JOBS, f"claim read {reads} rows of batch_runs (by aging) for {JOBS} jobs"


async def test_claim_runs_reads_only_the_jobs_with_queued_runs(db: Any) -> None:
    """With 5,000 configured jobs of which 3 have a queued run, a claim reads a few rows of batch_config and
    batch_runs, not a row per configured job (issue 20: at 100,000 jobs every claim took ~600 ms and the
    daemons started 8 runs/s of the 167 due), and still claims those 3 runs, with aging or without."""
    async with db.acquire() as conn:
        await add_jobs(conn, 5000)
        await conn.execute("""
            INSERT INTO batch_runs (job_name, job_type, trigger, root_trigger)
            SELECT job_name, 'synthetic', 'manual', 'manual' FROM unnest($1::text[]) AS job_name""",
                           ["job_10", "job_2000", "job_4999"])
        await conn.execute("ANALYZE batch_config, batch_runs")
        reads: dict[tuple[float, str], int] = {}
        claimed: dict[float, list[str]] = {}
        for aging in (0.0, 1.0):
            args = ("w1", 8, 60.0, None, aging)
            for table in ("batch_config", "batch_runs", ""):
                tr = conn.transaction()
                await tr.start()
                try:
                    if table:
                        reads[(aging, table)] = await rows_read(conn, Q["claim_runs"], args, table)
                    else:
                        claimed[aging] = sorted(r["job_name"] for r in await conn.fetch(Q["claim_runs"], *args))
                finally:
                    await tr.rollback()
    assert claimed == {0.0: ["job_10", "job_2000", "job_4999"], 1.0: ["job_10", "job_2000", "job_4999"]}
    assert max(reads.values()) <= 100, f"claim read {reads} rows (aging, table) with 3 queued jobs of 5,000"


async def test_runs_page_reads_one_page_under_a_generic_plan(db: Any) -> None:
    """10,000 runs of 1,000 jobs: a page of one job's runs (with or without a status or a cursor), or of a rare
    status, reads about one page of rows under a generic plan, where `$1 IS NULL OR job_name = $1` walked the
    whole history; every filter combination still returns the right rows, newest first."""
    async with db.acquire() as conn:
        await add_jobs(conn, 1000)
        await add_history(conn, 1000, 10)
        for job, status, cursor in ((None, None, None), ("job_3", None, None), ("job_3", None, 5000),
                                    ("job_3", "succeeded", None), (None, "cancelled", None)):
            if job is not None or status is not None:
                sql = Q[commands.runs_query(job, status)]
                read = await rows_read(conn, sql, (job, status, None, 5, cursor), "batch_runs")
                assert read <= 20, f"page job={job} status={status} cursor={cursor} read {read} rows"
            page, _ = await commands.page_runs(conn, job=job, status=status, since=None, limit=4, cursor=cursor)
            assert len(page) == 4 and all((job is None or r["job_name"] == job) and (status is None or
                                          r["status"] == status) and (cursor is None or r["id"] < cursor)
                                          for r in page)
            assert [r["id"] for r in page] == sorted((r["id"] for r in page), reverse=True)


async def test_metrics_scrape_reads_only_unresolved_dead_letters(db: Any) -> None:
    """10,000 dead letters of which 100 are unresolved: the scrape's per-job count reads those 100, not all of
    a job's dead letters, and reports them."""
    async with db.acquire() as conn:
        await add_jobs(conn)
        await conn.execute("""
            INSERT INTO dead_letters (job_name, run_id, stream, origin, reason, payload, payload_hash, resolved_at)
            SELECT format('job_%s', i % $1), i, 'records', 'handler', 'invalid', '{}', md5(i::text),
                   CASE WHEN i % 100 <> 0 THEN now() END
            FROM generate_series(1, $2::int) i""", JOBS, JOBS * PER_JOB)
        await conn.execute("ANALYZE dead_letters")
        read = await rows_read(conn, Q["metrics_jobs"], (), "dead_letters")
        counts = {r["job_name"]: r["dead_letters"] for r in await conn.fetch(Q["metrics_jobs"])}
    assert read <= JOBS * PER_JOB // 100, f"the scrape read {read} dead letters"
    assert sum(counts.values()) == JOBS * PER_JOB // 100
    assert await DatabaseMetrics().refresh(db)


async def test_dependencies_satisfied_reads_one_run_of_the_dependent(db: Any) -> None:
    """A dependent with 1,000 runs: the check finds its latest non-retry run in a probe (a few rows), not by
    reading all of them, and still compares it with the upstream's last success."""
    async with db.acquire() as conn:
        await add_jobs(conn)
        await add_history(conn)
        read = await rows_read(conn, Q["dependencies_satisfied"], ("job_1", ["job_0"]), "batch_runs")
        satisfied = await conn.fetchval(Q["dependencies_satisfied"], "job_1", ["job_0"])
        await conn.execute("UPDATE batch_config SET last_success_at = now() - interval '1 day' "
                           "WHERE job_name = 'job_0'")
        stale = await conn.fetchval(Q["dependencies_satisfied"], "job_1", ["job_0"])
    assert read <= 5, f"dependencies_satisfied read {read} runs"
    assert satisfied is True and stale is False


async def test_derived_parents_reads_only_jobs_of_the_deriving_types(db: Any) -> None:
    """The derived-jobs pass of every tick looks up the parents of the deriving handler types through an
    index: among 5,000 jobs of other types it reads none of them (it scanned them all before). Custom plan:
    a generic one cannot know how rare the wanted types are, and PostgreSQL keeps the custom plan here
    because it is far cheaper."""
    async with db.acquire() as conn:
        await add_jobs(conn, 5000)
        await conn.execute("INSERT INTO batch_config (job_name, job_type, enabled) VALUES ('parent', 'agent_batch', "
                           "true)")
        await conn.execute("ANALYZE batch_config")
        plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + Q["derived_parents"], ["agent_batch"])
        read = sum(round((n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"])
                   for n in _nodes(plan[0]["Plan"]) if n.get("Relation Name") == "batch_config")
        parents = await conn.fetch(Q["derived_parents"], ["agent_batch"])
    assert read <= 5, f"derived_parents read {read} rows of batch_config"
    assert [p["job_name"] for p in parents] == ["parent"]


async def test_seconds_until_next_due_reads_one_entry_on_stale_statistics(db: Any) -> None:
    """5,000 jobs analyzed while disabled, then enabled (statistics that see no enabled job, as after a bulk
    import): the loop's sleep query reads the first entry of the due index, not all 5,000 (as min() it
    aggregated the whole index: 110 ms at 100,000 jobs, issue 20), and returns the seconds to the first."""
    async with db.acquire() as conn:
        await conn.execute("""
            INSERT INTO batch_config (job_name, job_type, enabled, interval_minutes)
            SELECT format('job_%s', j), 'synthetic', false, 10 FROM generate_series(0, 4999) j""")
        await conn.execute("ANALYZE batch_config")
        await conn.execute("UPDATE batch_config SET enabled = true, "
                           "next_run_at = now() + make_interval(secs => 60 + substr(job_name, 5)::int)")
        read = await rows_read(conn, Q["seconds_until_next_due"], (), "batch_config")
        seconds = await conn.fetchval(Q["seconds_until_next_due"])
    assert read <= 5, f"seconds_until_next_due read {read} rows of batch_config"
    assert 55 < seconds <= 60


async def test_dependents_lookup_reads_a_few_pages_after_many_job_updates(db: Any) -> None:
    """Every occurrence updates its job's row (next_run_at); after 5,000 such updates, finding a job's
    dependents (every finished run does, twice) still reads a few index pages — the GIN index on depends_on
    no longer collects updates in a pending list that each lookup reads whole — and finds them."""
    async with db.acquire() as conn:
        await add_jobs(conn, 1000)
        for _ in range(5):
            await conn.execute("UPDATE batch_config SET next_run_at = coalesce(next_run_at, now()) + interval '1 min'")
        plans = [await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {Q[name]}", "job_0")
                 for name in ("dependents_of", "lock_job_family")]
        dependents = [r["job_name"] for r in await conn.fetch(Q["dependents_of"], "job_0")]
    pages = [p[0]["Plan"]["Shared Hit Blocks"] + p[0]["Plan"]["Shared Read Blocks"] for p in plans]
    assert max(pages) <= 12, f"dependents_of / lock_job_family read {pages} pages"
    assert dependents == ["job_1"]


# Every claimable queued run ranked (its job's best score first), then each of the first $1 locked jobs' best
# run — the claim as it was before issue 14, with the queue filter ($3) and aging ($2).
FULL_SCAN_BEST = """
WITH ranked AS (
    SELECT r.job_name, max(r.priority + $2::float8 * extract(epoch FROM now() - r.queued_at) / 60) AS score
    FROM batch_runs r WHERE r.status = 'queued' AND r.not_before <= now() AND r.root_trigger <> 'cli'
    GROUP BY r.job_name
), jobs AS (
    SELECT c.job_name, ranked.score FROM batch_config c JOIN ranked USING (job_name)
    WHERE NOT c.paused AND ($3::text[] IS NULL OR c.queue = ANY($3::text[]))
      AND NOT EXISTS (SELECT 1 FROM batch_runs x WHERE x.job_name = c.job_name AND x.status = 'running')
    ORDER BY ranked.score DESC, c.job_name LIMIT $1
)
SELECT DISTINCT ON (r.job_name) r.id
FROM batch_runs r JOIN jobs USING (job_name)
WHERE r.status = 'queued' AND r.not_before <= now() AND r.root_trigger <> 'cli'
ORDER BY r.job_name, r.priority + $2::float8 * extract(epoch FROM now() - r.queued_at) / 60 DESC, r.id"""


async def test_claim_runs_picks_what_a_full_scan_of_the_queue_picks(db: Any) -> None:
    """Semantics kept: on a queue with up to four priority levels per job, runs queued in the same instant
    (ties broken by id), runs not due yet, cli chains, a paused job and a job with a running run, the claim
    takes exactly the runs the pre-issue-14 full scan ranked best — with aging and without."""
    async with db.acquire() as conn:
        await add_jobs(conn, 40)
        await conn.execute("UPDATE batch_config SET paused = true WHERE job_name = 'job_7'")
        await conn.execute("""
            INSERT INTO batch_runs (job_name, job_type, trigger, queued_at, not_before, priority, root_trigger,
                                    status)
            SELECT format('job_%s', i % 40), 'synthetic', 'manual',
                   now() - make_interval(mins => (i * 7919) % 50), now() + make_interval(mins => CASE
                       WHEN (i * 31) % 11 = 0 THEN 5 ELSE -1 END),
                   ((i * 13) % 4) * 3, CASE WHEN (i * 17) % 13 = 0 THEN 'cli' ELSE 'manual' END,
                   CASE WHEN i = 9 THEN 'running' ELSE 'queued' END
            FROM generate_series(1, 4000) i ORDER BY i""")
        await conn.execute("ANALYZE batch_runs")
        for aging in (0.0, 1.0, 0.25):
            for slots in (1, 5, 40):
                expected = {r["id"] for r in await conn.fetch(FULL_SCAN_BEST, slots, aging, None)}
                tr = conn.transaction()
                await tr.start()
                try:
                    claimed = {r["id"] for r in await conn.fetch(Q["claim_runs"], "w1", slots, 60.0, None, aging)}
                finally:
                    await tr.rollback()
                assert claimed == expected, (aging, slots)
