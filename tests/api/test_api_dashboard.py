"""Admin API for the dashboard (issue 15): the read-only state up front (GET /api/info), one plain
read-only message, HEAD on every GET endpoint, the per-job recent runs for the charts, no next run for a
disabled job, and ``upstream_cancelled`` for the dependents of a run cancelled by hand."""

from __future__ import annotations

from typing import Any

from batcher.jobs import parse_jobs, sync_jobs
from batcher.models import Services
from batcher.openapi import OPERATIONS
from batcher.store import Q
from tests import inprocess
from tests.api.conftest import AUTH, JOBS, Client, MakeClient, error, ok
from tests.polling import wait_for


async def test_info_says_whether_the_api_is_read_only(make_client: MakeClient) -> None:
    """GET /api/info (no token needed) says readOnly true and how to allow changes when the daemon has no
    token; readOnly false when it has one. The token itself is never part of the answer."""
    read_only = await make_client(token=None)
    body = await ok(await read_only.get("/api/info"))
    assert body["readOnly"] is True and "BATCHER_API_TOKEN" in body["howToAllowChanges"]
    assert body["version"]
    writable = await make_client()
    body = await ok(await writable.get("/api/info"))
    assert body["readOnly"] is False and body["howToAllowChanges"] is None
    assert "test-token" not in str(body)


async def test_read_only_error_gives_its_advice_once(make_client: MakeClient) -> None:
    """The 403 read_only message names BATCHER_API_TOKEN exactly once and says to start the daemon with it."""
    client = await make_client(token=None)
    err = await error(await client.post("/api/batch/jobs/alpha/pause", headers=AUTH), 403, "read_only")
    assert err["message"].count("BATCHER_API_TOKEN") == 1 and "start the daemon" in err["message"], err


async def test_head_answers_every_get_endpoint_like_get_without_a_body(client: Client) -> None:
    """HEAD on each GET operation (and the dashboard) answers GET's status and content type, with no body,
    instead of 405."""
    paths = [op.path.replace("{id}", "1").replace("{name}", "alpha") for op in OPERATIONS if op.method == "GET"]
    for path in [*paths, "/", "/static/app.js"]:
        got = await client.get(path)
        await got.read()
        head = await client.head(path)
        assert head.status == got.status, (path, head.status, got.status)
        assert head.headers["Content-Type"].split(";")[0] == got.headers["Content-Type"].split(";")[0], path
        assert await head.read() == b"", path


async def _finished_run(services: Services, job: str, status: str, records: int, runtime_ms: int,
                        reason: str | None = None) -> int:
    run_id: int = await services.pool.fetchval(
        "INSERT INTO batch_runs (job_name, job_type, trigger, status, reason, records, started_at, finished_at,"
        " runtime_ms) VALUES ($1, 'synthetic', 'manual', $2, $3, $4, now(), now(), $5) RETURNING id",
        job, status, reason, records, runtime_ms)
    return run_id


async def test_job_history_gives_each_jobs_last_runs_for_the_charts(client: Client, services: Services) -> None:
    """GET /api/batch/jobs/history?runs=N answers, in one request, every job's last N runs that ran
    (succeeded, failed, cancelled — skipped occurrences left out), newest first, with status, reason,
    runtime and records; jobs without runs have an empty list; N is bounded (1..100)."""
    ids = [await _finished_run(services, "alpha", "succeeded", 10 * i, 100 * i) for i in range(1, 6)]
    failed = await _finished_run(services, "alpha", "failed", 3, 50, "permanent_error")
    await _finished_run(services, "alpha", "skipped", 0, 0, "overlap")
    await _finished_run(services, "beta", "cancelled", 1, 5, "cancelled")
    body = await ok(await client.get("/api/batch/jobs/history?runs=3"))
    history = body["history"]
    assert set(history) == set(JOBS)
    assert [r["id"] for r in history["alpha"]] == [failed, ids[4], ids[3]]
    newest = history["alpha"][0]
    assert (newest["status"], newest["reason"], newest["records"], newest["runtimeMs"]) == \
        ("failed", "permanent_error", 3, 50)
    assert newest["finishedAt"] and history["beta"][0]["status"] == "cancelled"
    assert history["events-sync"] == []
    default = await ok(await client.get("/api/batch/jobs/history"))
    assert len(default["history"]["alpha"]) == 6
    for bad in ("0", "101", "x"):
        await error(await client.get(f"/api/batch/jobs/history?runs={bad}"), 400, "invalid_parameter")


async def test_disabled_job_has_no_next_run_in_config(client: Client, services: Services) -> None:
    """A job disabled in the file has nextRunAt null in GET /api/batch/config (and in the stored row the
    CLI's `jobs` reads), as the README says; a paused job keeps its next run (the dashboard shows it
    paused)."""
    body = await ok(await client.get("/api/batch/config"))
    assert body["config"]["events-sync"]["enabled"] is False
    assert body["config"]["events-sync"]["nextRunAt"] is None
    assert await services.pool.fetchval(Q["get_job"].replace("*", "next_run_at"), "events-sync") is None
    await ok(await client.post("/api/batch/jobs/alpha/pause", headers=AUTH))
    body = await ok(await client.get("/api/batch/config"))
    assert body["config"]["alpha"]["paused"] is True and body["config"]["alpha"]["nextRunAt"] is not None


async def test_disabled_job_stale_next_run_is_not_shown(client: Client, services: Services) -> None:
    """A disabled job whose row still holds a next_run_at from an older version shows nextRunAt null."""
    await services.pool.execute("UPDATE batch_config SET next_run_at = now() WHERE job_name = 'events-sync'")
    body = await ok(await client.get("/api/batch/config"))
    assert body["config"]["events-sync"]["nextRunAt"] is None


async def test_file_enabling_a_disabled_job_schedules_it(services: Services) -> None:
    """Enabling the job in the file again gives it a next run (the sync computes one for enabled jobs)."""
    entries = {**JOBS, "events-sync": {**JOBS["events-sync"], "enabled": True}}
    await sync_jobs(services.pool, parse_jobs(entries, services.registry), entries, services.registry)
    assert await services.pool.fetchval(Q["get_job"].replace("*", "next_run_at"), "events-sync") is not None


async def test_cancelled_upstream_skips_dependents_as_upstream_cancelled(make_client: MakeClient,
                                                                          services: Services) -> None:
    """A running alpha cancelled by hand through the API ends cancelled, and its dependent after-alpha is
    recorded skipped with reason upstream_cancelled (a cancel is not a failure), naming the run."""
    await services.pool.execute("UPDATE batch_config SET next_run_at = NULL WHERE job_name = 'alpha'")
    async with inprocess.daemon(services, lease_seconds=10, drain_seconds=1.0) as scheduler:
        client = await make_client(scheduler=scheduler)
        body = await ok(await client.post("/api/batch/trigger", headers=AUTH, json={
            "jobName": "alpha", "params": {"records": 2000, "batch_size": 5, "delay_ms": 50}}))
        run_id = body["runId"]

        async def running() -> bool:
            return await services.pool.fetchval("SELECT status FROM batch_runs WHERE id = $1", run_id) == "running"

        await wait_for(running, interval=0.05, what="the run running")
        await ok(await client.post(f"/api/batch/runs/{run_id}/cancel", headers=AUTH))

        async def skipped() -> Any:
            return await services.pool.fetchrow(
                "SELECT * FROM batch_runs WHERE job_name = 'after-alpha' AND status = 'skipped'")

        skip = await wait_for(skipped, interval=0.05, what="after-alpha skipped")
    assert await services.pool.fetchval("SELECT status FROM batch_runs WHERE id = $1", run_id) == "cancelled"
    assert skip["reason"] == "upstream_cancelled" and skip["result"]["upstream_run_id"] == run_id
