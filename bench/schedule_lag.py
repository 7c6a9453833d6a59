"""Schedule lag (issues 6 and 20): 10,000 one-minute jobs on 2 daemons, then 100,000 on 4 (concurrency 8 each).

Each size (``--sizes``, default ``10000x2,100000x4@10``: jobs × daemons @ interval minutes) runs on
its own fresh database, one after the other, and the figures are printed side by side at the end so the
growth is visible.

The jobs (synthetic, ``records = 0``: no-op runs) are inserted straight into ``batch_config`` with
``source = 'api'`` (the daemons' job file is empty, and its sync only orphans ``source = 'file'`` jobs).
Their anchors are spread evenly over the minute (one every 6 ms: ~167 runs/s). Two ``python -m batcher
run`` processes (concurrency 8, default tick, lease and log settings) run them for ``--seconds`` (default
150); then the script stops them (SIGTERM) and prints, for the scheduled runs due in the measured window
(after a ``--warmup`` of 20 s):

- p50 / p90 / p99 / max of due → start (``started_at - scheduled_for``), and how many due runs had not
  started when the window closed (counted as lag beyond the window, so they push p99 up, never down);
- runs per second (scheduled runs finished per second of the window), the count of ``skipped``/``overlap``
  and ``skipped``/``missed`` rows, failed runs;
- each daemon's CPU use (share of one core), sampled from ``/proc`` while it ran;
- where the time goes: EXPLAIN ANALYZE of the per-tick statements on the job table and the runs table the
  benchmark left behind (the claim's plan cut to its CTEs and the index scans that ran: bench/common.py
  ``plan_digest``), and the wall time of one ``materialize_due`` of a minute's 6th (167 due jobs). With
  ``--py-spy PATH`` (or ``BENCH_PY_SPY``) a py-spy binary also records each daemon for 20 s (``--format
  raw``) and the top frames are printed.

Goal: p99 ≤ 1 s. Creates and drops its own PostgreSQL database on ``BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); uses ``BATCHER_REDIS_URL`` if set, else claims a
Redis db among 1–9 on ``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379``) with the tests' lock
scheme. Bounded: about ``--seconds`` + 70 s per size (start-up, stop, analysis).

With ``--interval-minutes M`` the jobs run every M minutes, their anchors spread over M minutes (the due
rate is jobs / (60 M) per second): 100,000 one-minute jobs are ~1,667 runs/s, beyond what 4 daemons on a
2-core machine shared with other work can start — ``--interval-minutes 10`` keeps the table at 100,000 jobs
at the 10,000-job rate.

    .venv/bin/python bench/schedule_lag.py [--sizes 10000x2,100000x4] [--seconds 150] [--concurrency 8]
        [--interval-minutes 1]        (or --jobs N --daemons D for one size)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
from common import BASE_REDIS, RedisDbLock, emit_result, plan_digest, temporary_database

from batcher import store
from batcher.materialize import materialize_due
from batcher.store import Q

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The issue's figures (10,000 jobs on 2 daemons, 100,000 on 4; one-minute jobs), and 100,000 jobs due at the
#: 10,000-job rate (every 10 minutes): the table's size alone.
DEFAULT_SIZES = "10000x2,100000x4@10"


async def insert_jobs(conn: Any, n: int, minutes: int = 1) -> None:
    """n synthetic no-op jobs every ``minutes``, disabled until :func:`arm` spreads their phases."""
    await conn.execute(
        "INSERT INTO batch_config (job_name, job_type, enabled, interval_minutes, params, source, next_run_at) "
        "SELECT format('lag-%s', lpad(g::text, 6, '0')), 'synthetic', false, $2, '{\"records\": 0}'::jsonb, "
        "'api', NULL FROM generate_series(0, $1 - 1) AS g", n, minutes)
    await conn.execute("ANALYZE batch_config")


async def arm(conn: Any, n: int, lead: float, minutes: int = 1) -> float:
    """Enable the jobs with anchors ``lead`` s from now, one every 60·minutes/n s; returns the first's epoch."""
    t0: float = await conn.fetchval("SELECT extract(epoch FROM now())::float8 + $1", lead)
    spread = "make_interval(secs => 60.0 * $3 * substr(job_name, 5)::int / $1)"
    await conn.execute(
        f"UPDATE batch_config SET enabled = true, schedule_anchor = to_timestamp($2) + {spread}, "
        f"  next_run_at = to_timestamp($2) + {spread}", n, t0, minutes)
    return t0


class Daemon:
    """One ``python -m batcher run`` process with its JSON log in a file."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen([sys.executable, "-m", "batcher", "run"], env=env, cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)

    def ready(self) -> bool:
        if self.popen.poll() is not None:
            raise SystemExit(f"daemon exited ({self.popen.returncode}):\n{self.log_path.read_text()[-3000:]}")
        return '"daemon_ready"' in self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode

    def warnings(self) -> Counter[str]:
        events: Counter[str] = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("level") in ("warning", "error", "critical"):
                    events[entry.get("event", "?")] += 1
        return events


def daemon_env(db_url: str, redis_url: str, workdir: Path, concurrency: int) -> dict[str, str]:
    config = workdir / "batcher.toml"
    config.write_text("")  # no jobs in the file: the benchmark's jobs are source = 'api'
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BATCHER_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(BATCHER_DATABASE_URL=db_url, BATCHER_REDIS_URL=redis_url, BATCHER_CONFIG=str(config),
               BATCHER_DATA_DIR=str(workdir / "data"), BATCHER_API_PORT="0", BATCHER_LOG_FORMAT="json",
               BATCHER_CONCURRENCY=str(concurrency), PYTHONUNBUFFERED="1")
    return env


async def wait_ready(daemons: list[Daemon], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(d.ready() for d in daemons):
        if time.monotonic() > deadline:
            raise SystemExit("daemons not ready within 60 s")
        await asyncio.sleep(0.1)


class ActivitySampler:
    """A poor man's profiler of the database: every 20 ms, which statements the other sessions of this
    database are executing and what they wait on (``pg_stat_activity``; pg_stat_statements is not loaded)."""

    def __init__(self) -> None:
        self.samples: Counter[tuple[str, str]] = Counter()
        self.ticks = 0
        self._by_prefix = {" ".join(sql.split())[:60]: name for name, sql in Q.items()}

    def name(self, query: str) -> str:
        text = " ".join(query.split())
        return self._by_prefix.get(text[:60]) or next(
            (n for p, n in self._by_prefix.items() if text.startswith(p[:40])), text[:50])

    async def run(self, conn: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT query, coalesce(wait_event_type || ':' || wait_event, 'on CPU') AS wait FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'")
            self.ticks += 1
            for r in rows:
                self.samples[(self.name(r["query"]), r["wait"])] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)

    def report(self, top: int = 14) -> None:
        busy = sum(self.samples.values())
        print(f"\ndatabase sessions busy (sampled every 20 ms, {self.ticks} samples): "
              f"{busy / max(self.ticks, 1):.2f} statements executing on average")
        for (name, wait), n in self.samples.most_common(top):
            print(f"  {100 * n / max(busy, 1):5.1f}%  {name:28} {wait}")


def postgres_cpu_seconds() -> float:
    """CPU seconds of every PostgreSQL process on this host, from /proc (0 when it runs elsewhere)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            head, _, rest = stat.read_text().rpartition(")")
            if head.split("(", 1)[1] in ("postgres", "postmaster"):
                fields = rest.split()
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def start_spies(py_spy: str, daemons: list[Daemon], workdir: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy recording each daemon for 20 s (raw collapsed stacks, 100 Hz, without pausing it)."""
    return [subprocess.Popen([py_spy, "record", "--pid", str(d.popen.pid), "--duration", "20", "--rate", "100",
                              "--format", "raw", "--output", str(workdir / f"spy{i}.txt"), "--nonblocking"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, d in enumerate(daemons)]


async def observe(conn: Any, conn_url: str, daemons: list[Daemon], seconds: float,
                  py_spy: str | None, workdir: Path) -> list[float]:
    """Print progress every 10 s for ``seconds`` while sampling the database's activity; returns each
    daemon's CPU share over the run, then PostgreSQL's (all its processes on this host)."""
    cpu0, pg0, started = [d.cpu_seconds() for d in daemons], postgres_cpu_seconds(), time.monotonic()
    spies = start_spies(py_spy, daemons, workdir) if py_spy else []
    sampler, stop = ActivitySampler(), asyncio.Event()
    sampler_conn = await asyncpg.connect(conn_url)
    sampling = asyncio.create_task(sampler.run(sampler_conn, stop))
    while (elapsed := time.monotonic() - started) < seconds:
        await asyncio.sleep(min(10.0, seconds - elapsed))
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'queued' AND not_before <= now()) AS queued, "
            "count(*) FILTER (WHERE status = 'running') AS running, "
            "count(*) FILTER (WHERE status = 'succeeded') AS succeeded, "
            "count(*) FILTER (WHERE status = 'skipped') AS skipped FROM batch_runs")
        print(f"  t={time.monotonic() - started:5.0f} s  queued {row['queued']:5}  running {row['running']:3}  "
              f"succeeded {row['succeeded']:6}  skipped {row['skipped']:5}", flush=True)
    stop.set()
    await sampling
    await sampler_conn.close()
    wall = time.monotonic() - started
    cpu = [(d.cpu_seconds() - c0) / wall for d, c0 in zip(daemons, cpu0, strict=True)]
    cpu.append((postgres_cpu_seconds() - pg0) / wall)
    for spy in spies:
        await asyncio.to_thread(spy.wait, 60)
    sampler.report()
    return cpu


async def lag_stats(conn: Any, t_from: float, t_to: float) -> dict[str, Any]:
    """due → start of the scheduled runs due in [t_from, t_to); a run not started by then counts as an
    infinite lag (a percentile that lands on one prints as "not started")."""
    row = await conn.fetchrow("""
        WITH w AS (
            SELECT r.*, coalesce(extract(epoch FROM r.started_at - r.scheduled_for)::float8,
                                 'Infinity'::float8) AS lag
            FROM batch_runs r
            WHERE r.trigger = 'schedule' AND r.scheduled_for >= to_timestamp($1)
              AND r.scheduled_for < to_timestamp($2))
        SELECT count(*) FILTER (WHERE status <> 'skipped') AS runs,
               count(*) FILTER (WHERE status <> 'skipped' AND started_at IS NULL) AS not_started,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE reason = 'overlap') AS overlap,
               count(*) FILTER (WHERE reason = 'missed') AS missed,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY lag) FILTER (WHERE status <> 'skipped') AS p50,
               percentile_disc(0.9) WITHIN GROUP (ORDER BY lag) FILTER (WHERE status <> 'skipped') AS p90,
               percentile_disc(0.99) WITHIN GROUP (ORDER BY lag) FILTER (WHERE status <> 'skipped') AS p99,
               max(lag) FILTER (WHERE status <> 'skipped' AND started_at IS NOT NULL) AS max_started,
               avg(runtime_ms) AS runtime_ms
        FROM w""", t_from, t_to)
    finished = await conn.fetchval(
        "SELECT count(*) FROM batch_runs WHERE trigger = 'schedule' AND status = 'succeeded' "
        "AND finished_at >= to_timestamp($1) AND finished_at < to_timestamp($2)", t_from, t_to)
    return {**dict(row), "runs_per_second": finished / (t_to - t_from), "window_seconds": t_to - t_from}


EXPLAINED = {  # statement → arguments (worker, slots, lease, queues, aging …)
    "due_jobs": (1000,),
    "claim_runs": ("bench-explain", 8, 60.0, None, 1.0),
    "abandoned_runs": (0x42415443,),
    "seconds_until_next_due": (),
    "job_busy": ("lag-005000",),
    "page_runs": (None, None, None, 21, None),
}


async def where_time_goes(pool: asyncpg.Pool, n: int) -> None:
    """EXPLAIN ANALYZE of the per-tick statements (in rolled-back transactions that make a minute's 6th of
    the jobs due and queue 16 runs), then one real materialize_due of 167 due jobs, timed."""
    print("\nwhere the time goes (statements on the tables the run left behind):")
    print(f"  batch_runs rows: {await pool.fetchval('SELECT count(*) FROM batch_runs')}, "
          f"run_logs rows: {await pool.fetchval('SELECT count(*) FROM run_logs')}")
    await pool.execute("ANALYZE")
    due = max(n // 60, 1)
    async with pool.acquire() as conn:
        for name, args in EXPLAINED.items():
            tx = conn.transaction()
            await tx.start()
            await conn.execute("UPDATE batch_config SET next_run_at = now() - interval '1 second' "
                               "WHERE job_name IN (SELECT job_name FROM batch_config ORDER BY job_name LIMIT $1)", due)
            await conn.execute("INSERT INTO batch_runs (job_name, job_type, trigger, root_trigger) SELECT job_name, "
                               "'synthetic', 'manual', 'manual' FROM batch_config ORDER BY job_name DESC LIMIT 16")
            plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {Q[name]}", *args)
            await tx.rollback()
            lines = [r[0] for r in plan]
            total = next((ln for ln in lines if ln.startswith("Execution Time")), "?")
            print(f"  {name:24} {total}")
            for ln in plan_digest(lines) if name == "claim_runs" else lines[:4] if name == "due_jobs" else []:
                print(f"      {ln[:150]}")
    await pool.execute("UPDATE batch_config SET next_run_at = now() - interval '1 second' "
                       "WHERE job_name IN (SELECT job_name FROM batch_config ORDER BY job_name LIMIT $1)", due)
    started = time.perf_counter()
    handled = await materialize_due(pool)
    took = time.perf_counter() - started
    print(f"  materialize_due of {handled} due jobs: {took * 1000:.0f} ms ({took / max(handled, 1) * 1000:.2f} ms/job, "
          f"one transaction; the jobs are due at {n / 60:.0f}/s)")


def print_spy(workdir: Path, top: int = 15) -> None:
    """Each daemon's py-spy raw profile: batcher/asyncpg functions by inclusive share, leaf functions by
    exclusive share (samples of non-idle threads only)."""
    for path in sorted(workdir.glob("spy*.txt")):
        inclusive: Counter[str] = Counter()
        leaves: Counter[str] = Counter()
        total = 0
        for line in path.read_text(errors="replace").splitlines():
            stack, _, samples = line.rpartition(" ")
            if not samples.isdigit():
                continue
            total += int(samples)
            frames = [_frame_name(f) for f in stack.split(";")]
            leaves[frames[-1]] += int(samples)
            for frame in set(frames):
                if any(f"({pkg}/" in frame for pkg in ("batcher", "handlers", "asyncpg", "apscheduler")):
                    inclusive[frame] += int(samples)
        print(f"\npy-spy {path.stem}: {total} non-idle samples at 100 Hz over 20 s")
        for title, counter in (("inclusive (batcher, handlers, asyncpg)", inclusive), ("exclusive (leaf)", leaves)):
            print(f"  {title}:")
            for frame, hits in counter.most_common(top):
                print(f"    {100 * hits / max(total, 1):5.1f}%  {frame[:130]}")


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` → ``func (…/package/file.py)``."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{func} ({'/'.join(path.split('/')[-2:])})"


async def bench(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    """Every size in turn, each on a fresh database (and Redis flushed between them)."""
    results: dict[str, Any] = {}
    for jobs, daemons, minutes in args.sizes:
        minutes = minutes or args.interval_minutes
        print(f"\n=== {jobs:,} jobs every {minutes} min, {daemons} daemons", flush=True)
        one = argparse.Namespace(**{**vars(args), "jobs": jobs, "daemons": daemons, "interval_minutes": minutes})
        results[f"{jobs}x{daemons}@{minutes}"] = await bench_size(one, redis_url)
    return results


async def bench_size(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    async with temporary_database("bench_schedule_lag") as db_url:
        pool = await store.create_pool(db_url, size=4)
        try:
            async with pool.acquire() as conn:
                await insert_jobs(conn, args.jobs, args.interval_minutes)
            if args.keep_logs:
                workdir = Path(args.keep_logs) / f"{args.jobs}x{args.daemons}"
                workdir.mkdir(parents=True, exist_ok=True)
                return await measure(args, pool, db_url, redis_url, workdir)
            with tempfile.TemporaryDirectory(prefix="bench-lag-") as tmp:
                return await measure(args, pool, db_url, redis_url, Path(tmp))
        finally:
            await pool.close()


async def measure(args: argparse.Namespace, pool: asyncpg.Pool, db_url: str, redis_url: str,
                  workdir: Path) -> dict[str, Any]:
    env = daemon_env(db_url, redis_url, workdir, args.concurrency)
    daemons = [Daemon(f"daemon{i}", env, workdir) for i in range(args.daemons)]
    try:
        await wait_ready(daemons)
        async with pool.acquire() as conn:
            t0 = await arm(conn, args.jobs, lead=2.0, minutes=args.interval_minutes)
            print(f"{args.jobs} jobs armed; {args.daemons} daemons × concurrency {args.concurrency}; "
                  f"running {args.seconds:.0f} s", flush=True)
            cpu = await observe(conn, db_url, daemons, args.seconds, args.py_spy, workdir)
            t_end = time.time()
    finally:
        codes = [d.stop() for d in daemons]
    warnings = sum((d.warnings() for d in daemons), Counter())
    stats = await lag_stats(pool, t0 + args.warmup, t_end - 2.0)
    report(stats, cpu, codes, warnings)
    await where_time_goes(pool, args.jobs // args.interval_minutes)
    if args.py_spy:
        print_spy(workdir)
    return {**{k: (float(v) if v is not None else None) for k, v in stats.items()}, "daemon_cpu": cpu,
            "jobs": args.jobs, "daemons": args.daemons, "interval_minutes": args.interval_minutes,
            "concurrency": args.concurrency,
            "exit_codes": codes}


def report(stats: dict[str, Any], cpu: list[float], codes: list[int], warnings: Counter[str]) -> None:
    def secs(v: Any) -> str:
        return "n/a" if v is None else "not started" if v == float("inf") else f"{float(v):.3f} s"

    print(f"\nscheduled runs due in the {stats['window_seconds']:.0f} s window: {stats['runs']} "
          f"(not started by its end: {stats['not_started']}, failed: {stats['failed']})")
    print(f"due → start  p50 {secs(stats['p50'])}  p90 {secs(stats['p90'])}  p99 {secs(stats['p99'])}  "
          f"max(started) {secs(stats['max_started'])}   goal p99 ≤ 1 s: "
          f"{'met' if stats['p99'] is not None and stats['p99'] <= 1.0 else 'MISSED'}")
    print(f"runs per second: {stats['runs_per_second']:.1f} (due: ~{stats['runs'] / stats['window_seconds']:.1f}/s)"
          f"   mean runtime_ms {float(stats['runtime_ms'] or 0):.1f}")
    print(f"skipped/overlap rows: {stats['overlap']}   skipped/missed rows: {stats['missed']}")
    print(f"CPU (share of one core): daemons {', '.join(f'{c:.2f}' for c in cpu[:-1])}, PostgreSQL {cpu[-1]:.2f}"
          f"   ({os.cpu_count()} cores)   daemon exit codes {codes}")
    if warnings:
        print(f"daemon warnings/errors: {dict(warnings.most_common(8))}")


def summarise(results: dict[str, Any], goal_s: float = 1.0) -> None:
    """The sizes side by side (the first is the baseline of the others), and a RESULT line for each."""
    def secs(v: Any) -> str:
        return "n/a" if v is None else "not started" if v == float("inf") else f"{float(v):.3f} s"

    print(f"\n{'jobs × daemons':>16} {'queued/s':>8} {'p50':>12} {'p99':>12} {'runs/s':>8} {'not started':>12}  "
          "daemon CPU")
    base: float | None = None
    for r in results.values():
        due_rate = r["runs"] / r["window_seconds"] if r["window_seconds"] else 0.0  # occurrences materialized
        print(f"{r['jobs']:>9,} × {r['daemons']:<4} {due_rate:>8.1f} {secs(r['p50']):>12} {secs(r['p99']):>12} "
              f"{r['runs_per_second']:>8.1f} {int(r['not_started'] or 0):>12}  "
              f"{', '.join(f'{c:.2f}' for c in r['daemon_cpu'][:-1])}")
        p99 = r["p99"]
        emit_result(f"schedule lag: {r['jobs']:,} jobs every {r['interval_minutes']} min, {r['daemons']} daemons "
                    "× concurrency 8, due → start p99", p99, "s", baseline=base,
                    baseline_label="the first size" if base is not None else "", goal=f"p99 ≤ {goal_s:g} s",
                    met=p99 is not None and p99 <= goal_s,
                    note=f"due {r['jobs'] / (60 * r['interval_minutes']):.0f}/s, queued {due_rate:.0f}/s, "
                         f"finished {r['runs_per_second']:.0f}/s, p50 {secs(r['p50'])}, "
                         f"{int(r['not_started'] or 0)} not started")
        if base is None and p99 is not None and p99 != float("inf"):
            base = p99


def parse_sizes(text: str) -> list[tuple[int, int, int | None]]:
    """``10000x2,100000x4@10`` → [(10000, 2, None), (100000, 4, 10)]: jobs × daemons, @ interval minutes
    (None: ``--interval-minutes``)."""
    sizes: list[tuple[int, int, int | None]] = []
    for part in text.split(","):
        size, _, minutes = part.strip().lower().partition("@")
        jobs, _, daemons = size.partition("x")
        sizes.append((int(jobs), int(daemons or 2), int(minutes) if minutes else None))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                        help=f"JOBSxDAEMONS[@MINUTES], comma-separated (default {DEFAULT_SIZES})")
    parser.add_argument("--jobs", type=int, help="one size only: this many jobs (with --daemons, default 2)")
    parser.add_argument("--daemons", type=int, help="one size only: this many daemons")
    parser.add_argument("--interval-minutes", type=int, default=1, help="the jobs' interval (default 1)")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep-logs", metavar="DIR", help="keep the daemons' logs (and profiles) in DIR")
    parser.add_argument("--py-spy", default=os.environ.get("BENCH_PY_SPY"), help="a py-spy binary: profile the daemons")
    args = parser.parse_args()
    if args.jobs or args.daemons:
        args.sizes = [(args.jobs or 10_000, args.daemons or 2, None)]
    lock: RedisDbLock | None = None
    redis_url = os.environ.get("BATCHER_REDIS_URL")
    if not redis_url:
        lock = RedisDbLock(BASE_REDIS)
        redis_url = lock.acquire()
    try:
        results = asyncio.run(bench(args, redis_url))
    finally:
        if lock is not None:
            lock.release()
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "schedule_lag.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    summarise(results)


if __name__ == "__main__":
    main()
