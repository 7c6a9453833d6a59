"""Admin API, jobs: GET/POST /api/batch/config, jobType resolution, trigger, pause/resume, next."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from batcher.jobs import parse_jobs, sync_jobs
from batcher.models import Services
from batcher.store import Q
from tests.api.conftest import AUTH, JOBS, Client, error, ok


async def test_get_config_lists_every_job_in_the_original_envelope(client: Client) -> None:
    """GET /api/batch/config answers {"success": true, "config": {job: {...}}} with camelCase keys, each
    job's schedule and params as stored, and nothing of the run machinery (no claim tokens)."""
    body = await ok(await client.get("/api/batch/config"))
    config = body["config"]
    assert set(config) == set(JOBS)
    alpha = config["alpha"]
    assert alpha["enabled"] is True and alpha["intervalMinutes"] == 60 and alpha["cron"] is None
    assert {"timezone", "priority", "queue", "paused", "params", "nextRunAt", "source"} <= set(alpha)
    assert config["beta"]["cron"] == "0 3 * * *" and config["beta"]["timezone"] == "Europe/Berlin"
    assert config["events-sync"]["params"]["api_key_env"] == "BATCHER_TEST_DATASYNC_KEY"
    assert config["after-alpha"]["dependsOn"] == ["alpha"]


async def test_post_config_stores_an_api_edit_and_recomputes_the_next_run(client: Client, services: Services) -> None:
    """An interval edit is validated, stored with source='api' and the file's hash kept, re-anchored at
    the database's now and due at once; a cron edit is due at its next occurrence (in its timezone)."""
    before = await services.pool.fetchrow(Q["get_job"], "alpha")
    body = await ok(await client.post("/api/batch/config", headers=AUTH,
                                      json={"jobType": "alpha", "enabled": True, "intervalMinutes": 15}))
    assert body["config"]["intervalMinutes"] == 15 and "next run" in body["message"]
    row = await services.pool.fetchrow(Q["get_job"], "alpha")
    assert row["source"] == "api" and row["file_hash"] == before["file_hash"]
    assert row["schedule_anchor"] > before["schedule_anchor"] and row["next_run_at"] == row["schedule_anchor"]

    body = await ok(await client.post("/api/batch/config", headers=AUTH,
                                      json={"jobName": "alpha", "cron": "30 2 * * *", "timezone": "Europe/Berlin"}))
    row = await services.pool.fetchrow(Q["get_job"], "alpha")
    assert row["interval_minutes"] is None and row["cron"] == "30 2 * * *"
    local = row["next_run_at"].astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (2, 30) and row["next_run_at"] > datetime.now(UTC)
    assert body["config"]["intervalMinutes"] is None and body["config"]["nextRunAt"] is not None


async def test_priority_edit_keeps_the_schedule_and_disable_clears_the_next_run(client: Client,
                                                                                 services: Services) -> None:
    """Changing only priority/queue/params leaves next_run_at alone; enabled=false clears it; enabling
    again makes the interval job due now. Params merge key by key (a null removes the key)."""
    before = await services.pool.fetchrow(Q["get_job"], "alpha")
    await ok(await client.post("/api/batch/config", headers=AUTH,
                               json={"jobType": "alpha", "priority": 7, "queue": "bulk",
                                     "params": {"records": 20, "batch_size": None}}))
    row = await services.pool.fetchrow(Q["get_job"], "alpha")
    assert row["next_run_at"] == before["next_run_at"] and row["priority"] == 7 and row["queue"] == "bulk"
    assert row["params"] == {"records": 20}
    await ok(await client.post("/api/batch/config", headers=AUTH, json={"jobType": "alpha", "enabled": False}))
    assert (await services.pool.fetchrow(Q["get_job"], "alpha"))["next_run_at"] is None
    await ok(await client.post("/api/batch/config", headers=AUTH, json={"jobType": "alpha", "enabled": True}))
    row = await services.pool.fetchrow(Q["get_job"], "alpha")
    assert row["next_run_at"] is not None and row["next_run_at"] <= await services.pool.fetchval("SELECT now()")


async def test_api_edit_wins_until_the_file_entry_changes(client: Client, services: Services) -> None:
    """DESIGN §3: a file sync with the same entry leaves the API's edit alone; a changed entry wins."""
    await ok(await client.post("/api/batch/config", headers=AUTH, json={"jobType": "alpha", "intervalMinutes": 15}))
    registry = services.registry
    await sync_jobs(services.pool, parse_jobs(JOBS, registry), JOBS, registry)
    row = await services.pool.fetchrow(Q["get_job"], "alpha")
    assert row["interval_minutes"] == 15 and row["source"] == "api"
    changed = {**JOBS, "alpha": {**JOBS["alpha"], "params": {"records": 11, "batch_size": 5}}}
    await sync_jobs(services.pool, parse_jobs(changed, registry), changed, registry)
    row = await services.pool.fetchrow(Q["get_job"], "alpha")
    assert row["interval_minutes"] == 60 and row["source"] == "file" and row["params"]["records"] == 11


@pytest.mark.parametrize("body, field, fragment", [
    ({"jobType": "alpha", "intervalMinutes": 0}, "intervalMinutes", "greater than or equal to 1"),
    ({"jobType": "alpha", "intervalMinutes": 1441}, "intervalMinutes", "less than or equal to 1440"),
    ({"jobType": "alpha", "intervalMinutes": 5, "cron": "* * * * *"}, None, "not both"),
    ({"jobType": "alpha", "cron": "61 * * * *"}, "cron", "bad cron"),
    ({"jobType": "alpha", "cron": "0 0 31 2 *"}, "cron", "never fires"),
    ({"jobType": "alpha", "timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
    ({"jobType": "alpha", "params": {"bogus": 1}}, "params.bogus", "unknown key"),
    ({"jobType": "alpha", "params": {"records": -1}}, "params.records", "greater than or equal to 0"),
    ({"jobType": "alpha", "params": {"token": "literal-value"}}, "params.token", "literal secret"),
    ({"jobType": "after-alpha", "intervalMinutes": 5}, "dependsOn", "no schedule of its own"),
    ({"jobType": "alpha", "colour": "blue"}, "colour", "Extra inputs"),
    ({"jobType": "alpha"}, None, "nothing to change"),
    ({"jobType": "alpha", "priority": 2**40}, "priority", "less than or equal"),
    ({"enabled": True}, None, "jobType (or jobName) is required"),
    ({"jobType": "alpha", "enabled": "maybe"}, "enabled", "boolean"),
    ({"jobType": "alpha", "enabled": "yes"}, "enabled", "boolean"),  # issue 15: strict, not coerced
    ({"jobType": "alpha", "intervalMinutes": "5"}, "intervalMinutes", "valid integer"),
    ({"jobType": "alpha", "queue": ""}, "queue", "at least 1 character"),
    ({"jobType": "alpha", "params": {"bogus": 1}}, "params.bogus", "valid keys: records, batch_size"),
])
async def test_post_config_rejects_invalid_settings_with_400(client: Client, services: Services, body: dict[str, Any],
                                                             field: str | None, fragment: str) -> None:
    """Every invalid edit is a 400 validation error naming the field, and the job is unchanged."""
    before = dict(await services.pool.fetchrow(Q["get_job"], body.get("jobType", "alpha")))
    err = await error(await client.post("/api/batch/config", headers=AUTH, json=body), 400, "validation_error")
    assert err.get("field") == field and fragment in err["message"], err
    assert "literal-value" not in err["message"]
    assert dict(await services.pool.fetchrow(Q["get_job"], body.get("jobType", "alpha"))) == before


@pytest.mark.parametrize("ref, expected", [
    ({"jobType": "alpha"}, "alpha"),  # a job name first
    ({"jobType": "datasync"}, "events-sync"),  # else the type's only job
    ({"jobName": "events-sync"}, "events-sync"),
    ({"jobType": "synthetic", "jobName": "beta"}, "beta"),  # jobName wins
    ({"jobType": "synthetic"}, 409),  # a type with several jobs
    ({"jobType": "usage_aggregation"}, 404),  # a type with no job
    ({"jobType": "no-such-thing"}, 404),
    ({"jobName": "datasync"}, 404),  # jobName is a job name only
])
async def test_job_type_resolution(client: Client, services: Services, ref: dict[str, str],
                                   expected: str | int) -> None:
    """jobType names a job name first, else the type's single configured job; several → 409
    ambiguous_job_type, none → 404. jobName is exact. The same rules serve trigger and config."""
    for path, extra in (("/api/batch/trigger", {}), ("/api/batch/config", {"priority": 3})):
        response = await client.post(path, headers=AUTH, json={**ref, **extra})
        if isinstance(expected, int):
            await error(response, expected, "ambiguous_job_type" if expected == 409 else "not_found")
            continue
        body = await ok(response)
        job = (await services.pool.fetchrow(Q["get_run"], body["runId"]))["job_name"] if "runId" in body \
            else body["config"]["jobName"]
        assert job == expected


async def test_trigger_queues_a_manual_run_and_repeats_return_it(client: Client, services: Services) -> None:
    """POST /api/batch/trigger answers {"success", "runId", "message"}; the run is queued (manual) with
    the given params; the same params again return the same run; other params queue another."""
    first = await ok(await client.post("/api/batch/trigger", headers=AUTH, json={"jobType": "alpha",
                                                                                "params": {"records": 3}}))
    run = await services.pool.fetchrow(Q["get_run"], first["runId"])
    assert run["status"] == "queued" and run["trigger"] == "manual" and run["params"] == {"records": 3}
    again = await ok(await client.post("/api/batch/trigger", headers=AUTH, json={"jobType": "alpha",
                                                                                "params": {"records": 3}}))
    assert again["runId"] == first["runId"] and again["existing"] is True and "already queued" in again["message"]
    other = await ok(await client.post("/api/batch/trigger", headers=AUTH, json={"jobType": "alpha"}))
    assert other["runId"] != first["runId"] and other["existing"] is False


@pytest.mark.parametrize("params, field", [
    ({"records": "many"}, "params.records"),
    ({"token": "s3cr3t-literal"}, "params.token"),
    ({"token_env": ""}, "params.token_env"),
])
async def test_trigger_rejects_bad_params_and_literal_secrets(client: Client, services: Services,
                                                              params: dict[str, Any], field: str) -> None:
    """Trigger params are validated by the handler's model; a literal secret is rejected without being
    echoed; no run is queued."""
    err = await error(await client.post("/api/batch/trigger", headers=AUTH,
                                        json={"jobType": "alpha", "params": params}), 400, "validation_error")
    assert err["field"] == field and "s3cr3t-literal" not in err["message"]
    assert await services.pool.fetchval("SELECT count(*) FROM batch_runs") == 0


async def test_pause_and_resume(client: Client, services: Services) -> None:
    """POST /api/batch/jobs/{name}/pause|resume flips paused; an unknown job is a 404."""
    body = await ok(await client.post("/api/batch/jobs/beta/pause", headers=AUTH))
    assert body["paused"] is True and body["job"] == "beta"
    assert (await services.pool.fetchrow(Q["get_job"], "beta"))["paused"] is True
    body = await ok(await client.post("/api/batch/jobs/beta/resume", headers=AUTH))
    assert (await services.pool.fetchrow(Q["get_job"], "beta"))["paused"] is False and body["paused"] is False
    await error(await client.post("/api/batch/jobs/nope/pause", headers=AUTH), 404, "not_found")
    await error(await client.post(f"/api/batch/jobs/{'x' * 201}/resume", headers=AUTH), 400, "invalid_parameter")


async def test_next_occurrences(client: Client) -> None:
    """GET /api/batch/jobs/{name}/next?n= lists the next n occurrences: interval steps from next_run_at,
    cron in its timezone; a dependent job has none; n outside 1..100 is a 400; unknown job 404."""
    body = await ok(await client.get("/api/batch/jobs/alpha/next", params={"n": "3"}))
    times = [datetime.fromisoformat(t) for t in body["next"]]
    assert len(times) == 3 and all(b - a == timedelta(minutes=60) for a, b in itertools.pairwise(times))
    body = await ok(await client.get("/api/batch/jobs/beta/next"))
    assert len(body["next"]) == 5
    assert all(datetime.fromisoformat(t).astimezone(ZoneInfo("Europe/Berlin")).hour == 3 for t in body["next"])
    body = await ok(await client.get("/api/batch/jobs/after-alpha/next"))
    assert body["next"] == [] and "dependencies" in body["message"]
    for n in ("0", "101", "x"):
        err = await error(await client.get("/api/batch/jobs/alpha/next", params={"n": n}), 400, "invalid_parameter")
        assert err["field"] == "n"
    await error(await client.get("/api/batch/jobs/nope/next"), 404, "not_found")


async def test_get_handlers_lists_every_job_type_and_its_params(client: Client) -> None:
    """`GET /api/handlers` (no token needed) lists each job type with its params — type, default,
    required, bounds, secret, description — as `batcher types --json` does, camelCase on the wire."""
    from batcher.handlertypes import describe_handlers
    from batcher.registry import load_registry

    body = await ok(await client.get("/api/handlers"))
    types = {h["type"]: h for h in body["handlers"]}
    assert set(types) == {h["type"] for h in describe_handlers(load_registry())}
    assert types["synthetic"]["displayName"] == "Synthetic records" and types["synthetic"]["acceptsWindows"]
    records = next(p for p in types["synthetic"]["params"] if p["name"] == "records")
    assert records["type"] == "int" and records["default"] == 1000 and records["required"] is False
    assert records["bounds"] == ">= 0" and records["description"]
    api_key = next(p for p in types["datasync"]["params"] if p["name"] == "api_key")
    assert api_key["secret"] is True and api_key["required"] is True
