"""``batcher run-job datasync`` as a real process against the fake DataSync API on this test's event loop.

The fake (``batcher.fakes.datasync``) is served by the test process while ``python -m batcher run-job``
runs as a subprocess with an empty config file; the results are read from PostgreSQL, the command's last
stdout line (its JSON summary) and the fake's request log. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from batcher.fakes.datasync import FakeDataSync, FakeOptions
from tests.e2e.procs import REPO, batcher_env
from tests.handlers.test_datasync import check_tables
from tests.polling import wait_for

KEY = "test-key"


@pytest.fixture
async def events_db(db: Any) -> Any:
    await db.execute("TRUNCATE events")
    return db


@pytest.fixture
def env(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "empty.toml"
    config.write_text("")
    return batcher_env(database_url, redis_url, config, tmp_path / "data", BATCHER_LOG_FORMAT="json")


async def start_run_job(env: dict[str, str], *params: str, stderr: Path) -> asyncio.subprocess.Process:
    args = ["run-job", "datasync", *(f"--param={p}" for p in params)]
    with stderr.open("ab") as err:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "batcher", *args, env=env, cwd=REPO,
                                                    stdout=asyncio.subprocess.PIPE, stderr=err,
                                                    start_new_session=True)


async def finish(proc: asyncio.subprocess.Process, within_s: float = 60.0) -> tuple[int, dict[str, Any]]:
    """Wait for the command; its exit status and the JSON summary on its last stdout line."""
    async with asyncio.timeout(within_s):
        stdout, _ = await proc.communicate()
    lines = [ln for ln in stdout.decode().splitlines() if ln.strip()]
    assert lines, f"no output (exit {proc.returncode})"
    return int(proc.returncode or 0), dict(json.loads(lines[-1]))


async def wait_or_exit(predicate: Any, within_s: float, what: str, proc: asyncio.subprocess.Process) -> bool:
    """Poll ``predicate`` until true; False when the process ended first; fail after ``within_s``."""
    outcome = await wait_for(lambda: predicate() or (proc.returncode is not None and "exited"), within_s, 0.005,
                             what=what)
    return outcome is True


async def test_run_job_command_ingests_20000_flat_events(events_db: Any, env: dict[str, str],
                                                         tmp_path: Path) -> None:
    """The real command with a literal ``api_key`` param ingests 20,000 events (flat envelope, gzip,
    overlaps, invalid ones): exit 0, exact summary counts, exact tables."""
    options = FakeOptions(events=20_000, shape="flat", invalid_every=40, overlap=5, gzip=True)
    async with FakeDataSync(options) as fake:
        proc = await start_run_job(env, f"base_url={fake.url}", f"api_key={KEY}", "batch_size=500",
                                   stderr=tmp_path / "stderr.log")
        status, summary = await finish(proc)
    assert status == 0 and summary["status"] == "succeeded", summary
    assert (summary["records"], summary["dead_letters"], summary["api_calls"]) == (19_500, 500, 40)
    await check_tables(events_db, fake)


async def test_wrong_key_fails_permanently_and_the_key_is_nowhere(events_db: Any, env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """A rejected key: exit 1, "DataSync rejected the API key (401)", and the key in no output, no run
    row, no run log."""
    secret = "sk-cli-secret-0815"
    async with FakeDataSync(FakeOptions(events=10)) as fake:
        proc = await start_run_job(env, f"base_url={fake.url}", f"api_key={secret}",
                                   stderr=tmp_path / "stderr.log")
        status, summary = await finish(proc)
    assert status == 1 and summary["errors"] == ["DataSync rejected the API key (401)"], summary
    assert secret not in (tmp_path / "stderr.log").read_text() + json.dumps(summary)
    rows = await events_db.fetch("SELECT r::text FROM batch_runs r UNION ALL SELECT l::text FROM run_logs l "
                                 "UNION ALL SELECT c::text FROM batch_config c")
    assert rows and not any(secret in r[0] for r in rows)


async def test_sigkill_at_10_random_moments_then_exactly_once(events_db: Any, env: dict[str, str],
                                                              tmp_path: Path) -> None:
    """20,000 events with 429s, 502/503s, overlapping pages and invalid events; the run-job process is
    SIGKILLed at 10 random moments (after a random number of requests plus a random delay) and rerun
    each time. Afterwards every valid event is in ``events`` once, every invalid one in ``dead_letters``
    once, no run is left ``running``, and each 429 was followed by a wait until its reset."""
    rng = random.Random(int(os.environ.get("DATASYNC_KILL_SEED", "0")) or None)
    options = FakeOptions(events=20_000, invalid_every=45, overlap=4, gzip=True, latency_ms=2,
                          rate_limit_every=11, rate_limit_delay_s=0.1, error_every=13)
    params = ("batch_size=500", f"api_key={KEY}")
    kills = starts = 0
    async with FakeDataSync(options) as fake:
        while kills < 10:
            starts += 1
            assert starts <= 30, f"only {kills} kills landed in {starts - 1} runs"
            seen = len(fake.log)
            proc = await start_run_job(env, f"base_url={fake.url}", *params, stderr=tmp_path / "stderr.log")
            target = seen + rng.randint(1, 4)
            if await wait_or_exit(lambda t=target: len(fake.log) >= t, 60, "requests", proc):
                await asyncio.sleep(rng.uniform(0, 0.03))  # the behaviour under test: a kill at a random moment
                if proc.returncode is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    kills += 1
            await proc.wait()
            fake.append(rng.randint(0, 30))  # new events keep arriving between runs
        proc = await start_run_job(env, f"base_url={fake.url}", *params, stderr=tmp_path / "stderr.log")
        status, summary = await finish(proc)
    assert status == 0 and summary["status"] == "succeeded", summary
    await check_tables(events_db, fake)
    assert await events_db.fetchval("SELECT count(*) FROM batch_runs WHERE status = 'running'") == 0
    abandoned = await events_db.fetchval(
        "SELECT count(*) FROM batch_runs WHERE status = 'failed' AND reason = 'abandoned'")
    assert abandoned == kills == 10
    for before, after in zip(fake.log, fake.log[1:], strict=False):
        if before["status"] == 429:
            assert after["t"] >= before["reset_at"], (before, after)
