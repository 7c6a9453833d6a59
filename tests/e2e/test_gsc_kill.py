"""``batcher run-job gsc`` against the fake Search Console in its own process: the shell contract, and a
``kill -9`` mid-run followed by a rerun that converges to exactly the served rows.
"""

from __future__ import annotations

import dataclasses
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batcher.fakes.gsc import FakeGsc, GscOptions
from tests.e2e.procs import Proc, batcher_env, poll, write_config
from tests.serving import fake_process

A, B = "https://a.example/", "sc-domain:b.example"
OPTIONS = GscOptions(sites={A: "siteOwner", B: "siteOwner"}, client_secret="e2e-client-secret",
                     refresh_token="e2e-refresh-token", days_with_data=20, rows_per_day=40, latency_ms=150)


@pytest.fixture
def fake_url() -> Iterator[str]:
    """The fake as a subprocess (the test blocks on batcher processes, so it cannot serve in-process)."""
    opts = {k: v for k, v in dataclasses.asdict(OPTIONS).items() if k != "empty_days"}
    with fake_process("gsc", opts) as url:
        yield url


def run_job(url: str, env: dict[str, str], log: Path) -> Proc:
    params = {"base_url": url, "token_url": url + "/token", "client_id": "client-1",
              "client_secret": OPTIONS.client_secret, "refresh_token": OPTIONS.refresh_token,
              "sites": json.dumps([A, B]), "initial_days": "25"}
    args = ["run-job", "gsc"]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    return Proc(args, env, log)


def expected() -> set[tuple[Any, ...]]:
    fake = FakeGsc(OPTIONS)
    return {(site, day, r["query"], round(r["clicks"]), round(r["impressions"]))
            for site in (A, B) for day in fake.data_days() for r in fake.rows(site, day)}


async def test_killed_gsc_run_job_and_rerun_converge(db: Any, database_url: str, redis_url: str, tmp_path: Path,
                                                     procs: list[Proc], fake_url: str) -> None:
    """SIGKILL after some days committed leaves part of the rows and a checkpoint; the rerun takes the
    chain over, re-reads from the checkpoint (minus refresh_days) and the table then holds exactly the
    served rows, once each; the JSON summary is the last stdout line and names no secret."""
    await db.execute("TRUNCATE gsc_search_analytics")
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "b.toml", {}), tmp_path)
    victim = run_job(fake_url, env, tmp_path / "killed.log")
    procs.append(victim)
    await poll(db, "SELECT count(*) > 30 FROM gsc_search_analytics")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    want = expected()
    partial = await db.fetchval("SELECT count(*) FROM gsc_search_analytics")
    assert 0 < partial < len(want)
    rerun = run_job(fake_url, env, tmp_path / "rerun.log")
    procs.append(rerun)
    assert rerun.wait(120) == 0, rerun.tail()
    summary = rerun.stdout_last_json()
    assert summary["status"] == "succeeded" and summary["job"] == "gsc"
    assert OPTIONS.client_secret not in json.dumps(summary) and OPTIONS.refresh_token not in json.dumps(summary)
    runs = [dict(r) for r in await db.fetch("SELECT * FROM batch_runs ORDER BY id")]
    assert [r["status"] for r in runs] == ["failed", "succeeded"] and runs[0]["reason"] == "abandoned"
    assert runs[1]["root_run_id"] == runs[0]["id"] and summary["run_id"] == runs[1]["id"]
    rows = await db.fetch("SELECT site, date, query, clicks, impressions FROM gsc_search_analytics")
    assert len(rows) == len(want) and {tuple(r) for r in rows} == want
    for log in (victim.log_path, rerun.log_path):
        text = log.read_text()
        assert OPTIONS.client_secret not in text and OPTIONS.refresh_token not in text
