"""Prometheus metrics of the process (DESIGN §9), exposed on ``/metrics`` by the admin API.

Every metric batcher exports is defined here, in the default registry, with bounded label sets: job
names and rate-limit namespaces, never run ids, URLs or credential discriminators.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from batcher.store import DB_ERRORS, Q
from batcher.worker import LOCK_CLASS

# --- HTTP client and rate limits (batcher.http, batcher.ratelimit) -------------------------------------
# The ``namespace`` label is :func:`namespace_label` of the client's namespace: its first two
# ``:``-separated parts ("hubspot:api:"), so credential discriminators never become label values.

HTTP_API_CALLS = Counter(
    "batcher_http_api_calls_total", "HTTP attempts sent upstream (every attempt counts).", ["namespace"])
HTTP_INGRESS_BYTES = Counter(
    "batcher_http_ingress_bytes_total", "Response body bytes received on the wire (before decompression).",
    ["namespace"])
HTTP_RATE_LIMITED = Counter(
    "batcher_http_rate_limited_total", "429 (or rate-limit 403) responses received.", ["namespace"])
HTTP_RETRIES = Counter(
    "batcher_http_retries_total", "Attempts retried after a 5xx, timeout or connection failure.",
    ["namespace"])
RATELIMIT_WAIT = Histogram(
    "batcher_ratelimit_wait_seconds", "Time a request waited for its rate-limit admission.", ["namespace"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
RATELIMIT_DEGRADED = Gauge(
    "batcher_ratelimit_degraded", "1 while Redis is unreachable and the local fallback limits requests.")


def namespace_label(namespace: str) -> str:
    """The bounded label for a namespace: ``"provider:endpoint:"`` (its first two ``:`` parts)."""
    parts = namespace.split(":")
    if len(parts) <= 2:
        return namespace[:64]
    return ":".join(parts[:2])[:63] + ":"


# --- Runs, scheduling, workers, dead letters (fed from PostgreSQL at scrape time; admin API issue) ------
# The runner writes everything into batch_runs/batch_config already, so these need no code in the runner:
# the /metrics handler calls :meth:`DatabaseMetrics.refresh` before rendering.
# - Run counters and histograms are fed once per finished run by a watermark on ``finished_at`` (the
#   database clock), trailing ``now()`` by ``commit_lag`` seconds so a finishing transaction that started
#   before a scrape and commits after it is still counted. They count the runs of every worker (the
#   cluster), from this process's start: aggregate across daemons with max(), not sum().
#   Records, API calls and dead letters of a run are counted when it finishes.
# - Gauges are the current state: set from scratch on each scrape, so removed jobs disappear.
# Labels: job names (and queue names) only, never run ids.

FINAL_STATUSES = ("succeeded", "failed", "cancelled", "skipped")

RUNS = Counter("batcher_runs_total", "Runs that reached a final status, by job and status.", ["job", "status"])
RUN_DURATION = Histogram(
    "batcher_run_duration_seconds", "Claim to final status of runs that ran.", ["job"],
    buckets=(1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0))
SCHEDULE_LAG = Histogram(
    "batcher_schedule_lag_seconds", "Due (scheduled_for, else not_before) to start, of runs that ran.", ["job"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0))
RUN_RECORDS = Counter("batcher_records_total", "Records committed, counted when their run finishes.", ["job"])
RUN_API_CALLS = Counter("batcher_run_api_calls_total", "Upstream API calls of finished runs.", ["job"])
RUN_DEAD_LETTERS = Counter("batcher_run_dead_letters_total", "Dead letters written by finished runs.", ["job"])
LAST_SUCCESS = Gauge("batcher_job_last_success_timestamp_seconds",
                     "Unix time of the job's last successful run (alert on staleness).", ["job"])
QUEUED = Gauge("batcher_runs_queued", "Queued runs that are due now (claimable), by job.", ["job"])
QUEUE_DEPTH = Gauge("batcher_queue_depth", "Queued runs that are due now, by queue.", ["queue"])
RUNNING = Gauge("batcher_runs_running", "Running runs, by job.", ["job"])
DEAD_LETTERS = Gauge("batcher_dead_letters_unresolved", "Unresolved dead letters, by job.", ["job"])
WORKERS_LIVE = Gauge("batcher_workers_live", "Workers whose liveness lock is held.")
DATABASE_UP = Gauge("batcher_metrics_database_up", "1 when the last scrape could read PostgreSQL.")
SCHEDULER_TICKS = Gauge("batcher_scheduler_ticks", "Passes of this daemon's scheduling loop since start.")


class DatabaseMetrics:
    """Feeds the run metrics from PostgreSQL (see the section comment). One per process's API."""

    def __init__(self, commit_lag: float = 10.0) -> None:
        self.commit_lag = commit_lag
        self._watermark: Any = None
        self._lock = asyncio.Lock()

    async def start(self, pool: Any) -> None:
        """Count runs that finish from now on."""
        self._watermark = await pool.fetchval(Q["metrics_watermark"], 0.0)

    async def refresh(self, pool: Any) -> bool:
        """Feed newly finished runs and reset the gauges; False (and database_up 0) when PostgreSQL fails."""
        async with self._lock:
            try:
                await self._feed(pool)
                jobs = await pool.fetch(Q["metrics_jobs"])
                live = await pool.fetchval(Q["live_workers"], LOCK_CLASS)
            except DB_ERRORS:
                DATABASE_UP.set(0)
                return False
        _set_gauges(jobs, int(live or 0))
        DATABASE_UP.set(1)
        return True

    async def _feed(self, pool: Any) -> None:
        if self._watermark is None:
            await self.start(pool)
        upto = await pool.fetchval(Q["metrics_watermark"], self.commit_lag)
        if upto <= self._watermark:
            return
        for row in await pool.fetch(Q["metrics_finished_runs"], self._watermark, upto):
            observe_finished_run(row)
        self._watermark = upto


def observe_finished_run(row: Mapping[str, Any]) -> None:
    job = row["job_name"]
    RUNS.labels(job, row["status"]).inc()
    if row["runtime_ms"] is not None:
        RUN_DURATION.labels(job).observe(row["runtime_ms"] / 1000)
    if row["lag_seconds"] is not None:
        SCHEDULE_LAG.labels(job).observe(max(float(row["lag_seconds"]), 0.0))
    RUN_RECORDS.labels(job).inc(row["records"])
    RUN_API_CALLS.labels(job).inc(row["api_calls"])
    RUN_DEAD_LETTERS.labels(job).inc(row["dead_letters"])


def _set_gauges(jobs: list[Mapping[str, Any]], live_workers: int) -> None:
    for gauge in (LAST_SUCCESS, QUEUED, QUEUE_DEPTH, RUNNING, DEAD_LETTERS):
        gauge.clear()
    depth: dict[str, int] = {}
    for job in jobs:
        name = job["job_name"]
        for status in FINAL_STATUSES:
            RUNS.labels(name, status)  # every job's series exists from the first scrape, at 0
        if job["last_success_at"] is not None:
            LAST_SUCCESS.labels(name).set(job["last_success_at"].timestamp())
        QUEUED.labels(name).set(job["queued"])
        RUNNING.labels(name).set(job["running"])
        DEAD_LETTERS.labels(name).set(job["dead_letters"])
        depth[job["queue"]] = depth.get(job["queue"], 0) + int(job["queued"])
    for queue, count in depth.items():
        QUEUE_DEPTH.labels(queue).set(count)
    WORKERS_LIVE.set(live_workers)


def render() -> tuple[bytes, str]:
    """The default registry in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
