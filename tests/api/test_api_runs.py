"""Admin API, runs: list with filters and cursor pages, latest (per job), one run, cancel, dead letters."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.models import Services
from batcher.store import Q
from batcher.testing import run_job_once
from tests.api.conftest import AUTH, Client, error, ok


async def _queue(client: Client, n: int, job: str = "alpha") -> list[int]:
    ids = []
    for i in range(n):
        body = await ok(await client.post("/api/batch/trigger", headers=AUTH,
                                          json={"jobName": job, "params": {"records": i + 1}}))
        ids.append(body["runId"])
    return ids


async def test_runs_are_listed_newest_first_with_cursor_pages(client: Client) -> None:
    """GET /api/batch/runs?limit= pages newest first; nextCursor leads to the next (older) page and is
    null on the last; the pages together hold every run once."""
    ids = await _queue(client, 5)
    seen: list[int] = []
    params: dict[str, str] = {"limit": "2"}
    while True:
        body = await ok(await client.get("/api/batch/runs", params=params))
        seen += [r["id"] for r in body["runs"]]
        if body["nextCursor"] is None:
            break
        params["cursor"] = str(body["nextCursor"])
    assert seen == sorted(ids, reverse=True)
    run = (await ok(await client.get("/api/batch/runs", params={"limit": "1"})))["runs"][0]
    assert run["jobName"] == "alpha" and run["status"] == "queued" and "claimToken" not in run


async def test_runs_filter_by_job_status_and_since(client: Client, services: Services) -> None:
    """job, status and since (queued at or after, timezone required) filter the list."""
    alpha = await _queue(client, 2)
    beta = await _queue(client, 1, "beta")
    await services.pool.execute("UPDATE batch_runs SET status = 'cancelled', finished_at = now() WHERE id = $1",
                                alpha[0])
    body = await ok(await client.get("/api/batch/runs", params={"job": "beta"}))
    assert [r["id"] for r in body["runs"]] == beta
    body = await ok(await client.get("/api/batch/runs", params={"status": "cancelled"}))
    assert [r["id"] for r in body["runs"]] == [alpha[0]]
    await services.pool.execute("UPDATE batch_runs SET queued_at = '2020-01-01T00:00:00Z' WHERE id = $1", alpha[1])
    body = await ok(await client.get("/api/batch/runs", params={"since": "2021-01-01T00:00:00Z"}))
    assert alpha[1] not in [r["id"] for r in body["runs"]] and len(body["runs"]) == 2


@pytest.mark.parametrize("params, field", [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"status": "exploded"}, "status"), ({"since": "yesterday"}, "since"),
    ({"since": "2024-01-01T00:00:00"}, "since"), ({"since": "9999-12-31T23:59:59-14:00"}, "since"),
    ({"cursor": "0"}, "cursor"),
    ({"cursor": str(2**63)}, "cursor"), ({"job": "a\x00b"}, "job"), ({"job": "x" * 201}, "job"),
])
async def test_runs_query_values_are_validated_before_sql(client: Client, params: dict[str, str],
                                                          field: str | None) -> None:
    """Bad query values are 400 invalid_parameter naming the parameter — never a database error."""
    err = await error(await client.get("/api/batch/runs", params=params), 400, "invalid_parameter")
    assert err.get("field") == field


async def test_latest_run_and_latest_per_job(client: Client) -> None:
    """/runs/latest is the newest run (or null), filtered by job; byJobType=true maps each job with a run
    to its newest run."""
    assert (await ok(await client.get("/api/batch/runs/latest")))["run"] is None
    alpha = await _queue(client, 2)
    beta = await _queue(client, 1, "beta")
    assert (await ok(await client.get("/api/batch/runs/latest")))["run"]["id"] == beta[0]
    body = await ok(await client.get("/api/batch/runs/latest", params={"job": "alpha"}))
    assert body["run"]["id"] == alpha[1]
    body = await ok(await client.get("/api/batch/runs/latest", params={"byJobType": "true"}))
    assert {job: run["id"] for job, run in body["runs"].items()} == {"alpha": alpha[1], "beta": beta[0]}


async def test_one_run_with_logs_errors_progress_and_counters(client: Client, services: Services) -> None:
    """GET /api/batch/runs/{id} of a finished run has its counters, progress, errors and logs, and never
    its claim token."""
    summary = await run_job_once(services.settings, "alpha")
    body = await ok(await client.get(f"/api/batch/runs/{summary['run_id']}"))
    run = body["run"]
    assert run["status"] == "succeeded" and run["records"] == 10 and run["runtimeMs"] is not None
    assert isinstance(run["progress"], dict) and run["errors"] == [] and run["logs"]
    assert {"seq", "at", "level", "event", "fields"} <= set(run["logs"][0])
    assert "claimToken" not in run and "claim_token" not in str(body)


@pytest.mark.parametrize("run_id, status", [
    ("0", 400), ("-1", 400), ("abc", 400), ("1e3", 400), (str(2**63), 400), ("9" * 40, 400),
    ("\u0661", 400), (str(2**63 - 1), 404), ("424242", 404),
])
async def test_run_ids_are_checked_before_sql(client: Client, run_id: str, status: int) -> None:
    """Run ids must be integers from 1 to 2^63-1 (400 otherwise, never a 5xx); a valid unknown id is 404."""
    await error(await client.get(f"/api/batch/runs/{run_id}"), status)
    await error(await client.post(f"/api/batch/runs/{run_id}/cancel", headers=AUTH), status)


async def test_cancel_a_queued_run_then_conflict(client: Client, services: Services) -> None:
    """Cancelling a queued run ends it cancelled; cancelling it again is a 409 conflict."""
    (run_id,) = await _queue(client, 1)
    body = await ok(await client.post(f"/api/batch/runs/{run_id}/cancel", headers=AUTH))
    assert body["result"] == "cancelled" and body["runId"] == run_id
    assert (await services.pool.fetchrow(Q["get_run"], run_id))["status"] == "cancelled"
    err = await error(await client.post(f"/api/batch/runs/{run_id}/cancel", headers=AUTH), 409, "conflict")
    assert "already finished" in err["message"]


async def test_cancel_a_running_run_asks_it_to_stop(client: Client, services: Services) -> None:
    """Cancelling a running run records the request (the worker stops it at its next batch boundary)."""
    (run_id,) = await _queue(client, 1)
    await services.pool.execute("UPDATE batch_runs SET status = 'running', started_at = now() WHERE id = $1", run_id)
    body = await ok(await client.post(f"/api/batch/runs/{run_id}/cancel", headers=AUTH))
    assert body["result"] == "cancel_requested"
    assert (await services.pool.fetchrow(Q["get_run"], run_id))["cancel_requested"] == "cancelled"


async def _dead_letter(services: Services, job: str, payload: str, resolved: bool = False) -> None:
    await services.pool.execute(
        "INSERT INTO dead_letters (job_name, stream, origin, reason, payload, payload_hash, resolved_at) "
        "VALUES ($1, 'run_ignore', 'handler', 'bad record', $2, md5($2), CASE WHEN $3 THEN now() END)",
        job, payload, resolved)


async def test_dead_letters_by_job(client: Client, services: Services) -> None:
    """GET /api/batch/dead-letters lists unresolved dead letters newest first, by job when asked,
    resolved ones too with includeResolved=true."""
    await _dead_letter(services, "alpha", '{"seq": 1}')
    await _dead_letter(services, "beta", '{"seq": 2}')
    await _dead_letter(services, "alpha", '{"seq": 3}', resolved=True)
    body = await ok(await client.get("/api/batch/dead-letters"))
    assert [d["payload"] for d in body["deadLetters"]] == ['{"seq": 2}', '{"seq": 1}']
    body = await ok(await client.get("/api/batch/dead-letters", params={"job": "alpha", "includeResolved": "true"}))
    letters: list[dict[str, Any]] = body["deadLetters"]
    assert [d["payload"] for d in letters] == ['{"seq": 3}', '{"seq": 1}'] and letters[0]["resolvedAt"]
    assert {"id", "jobName", "stream", "origin", "reason", "payloadHash", "createdAt"} <= set(letters[0])
    await error(await client.get("/api/batch/dead-letters", params={"limit": "0"}), 400, "invalid_parameter")
