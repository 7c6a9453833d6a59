"""/metrics: Prometheus text that prometheus-client's parser reads, with the runs counter by job and
status, the last-success gauge per job, run histograms and gauges — fed from PostgreSQL at scrape time,
each finished run counted once, labels bounded (job names, never run ids)."""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from batcher import store
from batcher.models import Services
from batcher.store import Q
from batcher.testing import run_job_once
from tests.api.conftest import Client, MakeClient

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
ALLOWED_LABELS = {"job", "status", "queue", "namespace", "le"}


async def scrape(client: Client) -> tuple[dict[str, Any], Samples]:
    """Parse /metrics: families by name, and every batcher_* sample keyed by (name, sorted labels)."""
    response = await client.get("/metrics")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    samples: Samples = {}
    for family in families.values():
        for s in family.samples:
            if s.name.startswith("batcher_"):
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_finished_runs_once_with_bounded_labels(client: Client, services: Services) -> None:
    """After a succeeded and a failed run, /metrics parses; batcher_runs_total has +1 for (alpha,
    succeeded) and (boom, failed), and stays there on the next scrape; records and the duration histogram
    moved; the last-success gauge of alpha is its last_success_at; every job has its runs series; no
    label holds a run id."""
    _, before = await scrape(client)
    ok_run = await run_job_once(services.settings, "alpha")
    bad_run = await run_job_once(services.settings, "synthetic", job_name="boom", params={
        "records": 20, "batch_size": 5, "fail_at_batch": 2, "fail_mode": "permanent"})
    assert ok_run["status"] == "succeeded" and bad_run["status"] == "failed"
    families, after = await scrape(client)
    assert families["batcher_runs"].type == "counter"
    assert value(after, "batcher_runs_total", job="alpha", status="succeeded") == \
        value(before, "batcher_runs_total", job="alpha", status="succeeded") + 1
    assert value(after, "batcher_runs_total", job="boom", status="failed") == \
        value(before, "batcher_runs_total", job="boom", status="failed") + 1
    assert value(after, "batcher_records_total", job="alpha") == \
        value(before, "batcher_records_total", job="alpha") + 10
    assert value(after, "batcher_run_duration_seconds_count", job="alpha") == \
        value(before, "batcher_run_duration_seconds_count", job="alpha") + 1
    assert value(after, "batcher_schedule_lag_seconds_count", job="boom") >= 1
    last_success = await services.pool.fetchval("SELECT last_success_at FROM batch_config WHERE job_name = 'alpha'")
    assert families["batcher_job_last_success_timestamp_seconds"].type == "gauge"
    assert value(after, "batcher_job_last_success_timestamp_seconds", job="alpha") == last_success.timestamp()
    assert ("batcher_job_last_success_timestamp_seconds", (("job", "beta"),)) not in after  # never succeeded
    for job in [r["job_name"] for r in await services.pool.fetch(Q["list_jobs"])]:
        assert ("batcher_runs_total", (("job", job), ("status", "succeeded"))) in after
    assert value(after, "batcher_workers_live") >= 0 and value(after, "batcher_metrics_database_up") == 1
    run_ids = {str(ok_run["run_id"]), str(bad_run["run_id"])}
    for (_, labels) in after:
        assert {k for k, _ in labels} <= ALLOWED_LABELS and not run_ids & {v for _, v in labels}
    _, again = await scrape(client)
    assert value(again, "batcher_runs_total", job="alpha", status="succeeded") == \
        value(after, "batcher_runs_total", job="alpha", status="succeeded")


async def test_queue_depth_and_dead_letter_gauges(client: Client, services: Services) -> None:
    """Queued runs show in batcher_runs_queued (per job) and batcher_queue_depth (per queue); unresolved
    dead letters in batcher_dead_letters_unresolved."""
    for records in (1, 2):
        await client.post("/api/batch/trigger", json={"jobName": "beta", "params": {"records": records}},
                          headers={"Authorization": "Bearer test-token-0123456789abcdef"})
    await services.pool.execute(
        "INSERT INTO dead_letters (job_name, stream, origin, reason, payload, payload_hash) "
        "VALUES ('beta', 'run_ignore', 'handler', 'bad', '{}', 'h1')")
    _, samples = await scrape(client)
    assert value(samples, "batcher_runs_queued", job="beta") == 2
    assert value(samples, "batcher_queue_depth", queue="default") >= 2
    assert value(samples, "batcher_dead_letters_unresolved", job="beta") == 1


async def test_runs_inside_the_commit_lag_are_not_counted_yet(make_client: MakeClient, services: Services) -> None:
    """The feed trails the database clock by its commit lag, so a run that just finished is counted on
    a later scrape, never twice and never missed (here: a one-hour lag keeps it out)."""
    client = await make_client(commit_lag=3600.0)
    _, before = await scrape(client)
    await run_job_once(services.settings, "alpha")
    _, after = await scrape(client)
    assert value(after, "batcher_runs_total", job="alpha", status="succeeded") == \
        value(before, "batcher_runs_total", job="alpha", status="succeeded")


async def test_metrics_answer_during_a_database_outage(make_client: MakeClient, services: Services) -> None:
    """With PostgreSQL unreachable /metrics still answers 200 (process metrics) with
    batcher_metrics_database_up 0."""
    closed = await store.create_pool(services.database_url, size=2)
    await closed.close()
    client = await make_client(svc=dataclasses.replace(services, pool=closed))
    _, samples = await scrape(client)
    assert value(samples, "batcher_metrics_database_up") == 0
