"""``batcher run-job hubspot`` as a real process against the fake HubSpot API served by this test.

The command runs with literal ``access_token`` and ``objects`` params (as from a shell), is SIGKILLed at
random moments during the first sync (list endpoint) and during incremental syncs (keyset search), and is
rerun each time; the table must then equal the fake's records exactly.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batcher.fakes.hubspot import FakeHubSpot, FakeOptions
from tests.e2e.procs import REPO, batcher_env
from tests.e2e.test_datasync import finish, wait_or_exit

TOKEN = "pat-e2e-token"


@pytest.fixture
async def hubspot_db(db: Any) -> Any:
    await db.execute("TRUNCATE hubspot_objects, hubspot_events")
    return db


@pytest.fixture
def env(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "batcher.toml"
    config.write_text('[rate_limits."hubspot:api:"]\ninterval_ms = 1000\nmax_in_interval = 100000\n'
                      '[rate_limits."hubspot:search:"]\ninterval_ms = 1000\nmax_in_interval = 100000\n')
    return batcher_env(database_url, redis_url, config, tmp_path / "data")


async def start(env: dict[str, str], fake: FakeHubSpot, stderr: Path) -> asyncio.subprocess.Process:
    args = ["run-job", "hubspot", "--param", f"base_url={fake.url}", "--param", f"access_token={TOKEN}",
            "--param", 'objects=["contacts"]', "--param", "settle_seconds=0"]
    with stderr.open("ab") as err:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "batcher", *args, env=env, cwd=REPO,
                                                    stdout=asyncio.subprocess.PIPE, stderr=err,
                                                    start_new_session=True)


async def kill_runs(env: dict[str, str], fake: FakeHubSpot, rng: random.Random, kills: int, stderr: Path) -> int:
    """Start the command and SIGKILL it after a few more requests, ``kills`` times; returns kills landed."""
    landed = starts = 0
    while landed < kills:
        starts += 1
        assert starts <= 3 * kills, f"only {landed} kills landed in {starts - 1} runs"
        target = len(fake.log) + rng.randint(2, 8)
        proc = await start(env, fake, stderr)
        if await wait_or_exit(lambda t=target: len(fake.log) >= t, 60, "requests", proc):
            await asyncio.sleep(rng.uniform(0, 0.02))  # the behaviour under test: a kill at a random moment
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                landed += 1
        await proc.wait()
    return landed


async def converged(pool: Any, fake: FakeHubSpot) -> None:
    rows = await pool.fetch("SELECT id, properties, archived FROM hubspot_objects WHERE object_type = 'contacts'")
    live = fake.live("contacts")
    assert len(rows) == len({r["id"] for r in rows}) == len(live)
    for row in rows:
        assert row["properties"]["name"] == live[int(row["id"])]["props"]["name"]


async def test_kill_9_mid_run_then_rerun_converges(hubspot_db: Any, env: dict[str, str], tmp_path: Path) -> None:
    """8,000 contacts: the first sync (list) is killed 3 times, then finishes; every record is modified
    (about 10 per millisecond: ties across pages) and the incremental sync (search) is killed 3 times,
    then finishes. The table equals the fake's records, no run is left running, and every kill left one
    ``abandoned`` run."""
    rng = random.Random(int(os.environ.get("HUBSPOT_KILL_SEED", "0")) or None)
    stderr = tmp_path / "stderr.log"
    async with FakeHubSpot(FakeOptions(records={"contacts": 8_000}, access_token=TOKEN, latency_ms=3)) as fake:
        kills = await kill_runs(env, fake, rng, 3, stderr)
        status, summary = await finish(await start(env, fake, stderr))
        assert status == 0 and summary["status"] == "succeeded", summary
        await converged(hubspot_db, fake)
        cursor = await hubspot_db.fetchval("SELECT cursor FROM checkpoints WHERE stream = 'objects'")
        base = int(cursor["contacts"]["ts"]) + 1  # modifications happen after the search cursor
        span = int(time.time() * 1000) - base - 1
        assert span > 50
        ids = rng.sample(range(1, 8_001), 8_000)
        for n, i in enumerate(ids):
            fake.touch("contacts", [i], at_ms=base + (n * 7919) % span // 10 * 10)  # ~10 records per ms
        kills += await kill_runs(env, fake, rng, 3, stderr)
        status, summary = await finish(await start(env, fake, stderr))
    assert status == 0 and summary["status"] == "succeeded", summary
    assert any(e.get("kind") == "search" for e in fake.log)
    await converged(hubspot_db, fake)
    assert await hubspot_db.fetchval("SELECT count(*) FROM batch_runs WHERE status = 'running'") == 0
    abandoned = await hubspot_db.fetchval(
        "SELECT count(*) FROM batch_runs WHERE status = 'failed' AND reason = 'abandoned'")
    assert abandoned == kills == 6
