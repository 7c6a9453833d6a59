"""The chaos driver (issue 20), shared by the bounded form in ``make test`` and ``make chaos``.

Three daemon processes on one database run synthetic jobs and a DataSync job (the fake, with 429s,
502/503s, latency, overlapping pages and invalid events, new events arriving all along) while the driver
SIGKILLs a random ready daemon every few seconds and starts a new one in its place. Afterwards
:func:`check_outcome` proves: every expected record exactly once in ``synthetic_records`` and ``events``
(every invalid event once in ``dead_letters``), no two runs of one job overlapping in time, no run left
``running`` or ``queued``, every run that died with its daemon followed by a retry, every run chain
ending succeeded, no request reaching the fake before a 429's reset (the pause is shared) — and
:class:`ChaosReport` gives the failover times (kill → the retry started) as p50/p99/max.

Every wait is asynchronous: the fake DataSync is served by the same event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batcher.fakes.datasync import FakeDataSync, FakeOptions
from tests.e2e.procs import Proc, batcher_env, poll, write_config
from tests.e2e.waits import wait_events, wait_exit
from tests.handlers.test_datasync import check_tables

API_KEY = "test-key"
SYNTHETIC_JOBS = 5
RECORDS = 1200  # per synthetic run: 12 batches of 100, ~40 ms apart (about a second per run)
FAKE = FakeOptions(events=2000, invalid_every=50, overlap=3, latency_ms=15, rate_limit_every=7,
                   rate_limit_delay_s=0.1, error_every=5, gzip=True)


@dataclass
class Kill:
    pid: int
    at: float  # epoch seconds


@dataclass
class ChaosReport:
    kills: list[Kill] = field(default_factory=list)
    failovers: list[float] = field(default_factory=list)  # seconds from a kill to its run's retry start
    runs: int = 0
    abandoned: int = 0

    def summary(self) -> str:
        f = sorted(self.failovers)
        if not f:
            return f"chaos: {len(self.kills)} kills, {self.runs} runs, no run died with its daemon"
        return (f"chaos: {len(self.kills)} kills, {self.runs} runs, {self.abandoned} died with their daemon; "
                f"failover (kill → retry started) p50 {_pct(f, 50):.2f} s, p99 {_pct(f, 99):.2f} s, "
                f"max {f[-1]:.2f} s")


def _pct(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def chaos_jobs(fake_url: str) -> dict[str, dict[str, Any]]:
    common = {"interval_minutes": 1440, "max_abandons": 100, "max_retries": 20, "retry_base_seconds": 0.2}
    jobs: dict[str, dict[str, Any]] = {
        f"synth{i}": {"type": "synthetic", **common,
                      "params": {"records": RECORDS, "batch_size": 100, "delay_ms": 40}}
        for i in range(SYNTHETIC_JOBS)}
    jobs["datasync"] = {"type": "datasync", **common,
                        "params": {"base_url": fake_url, "api_key_env": "DATASYNC_API_KEY", "batch_size": 100}}
    return jobs


class Chaos:
    """The daemons, the driver loop and the kill log."""

    def __init__(self, db: Any, env: dict[str, str], tmp_path: Path, procs: list[Proc], seed: int | None) -> None:
        self.db, self.env, self.tmp_path, self.procs = db, env, tmp_path, procs
        self.rng = random.Random(seed)
        self.daemons: list[Proc] = []
        self.report = ChaosReport()
        self._spawned = itertools.count()

    def spawn(self) -> Proc:
        proc = Proc(["run"], self.env, self.tmp_path / f"daemon{next(self._spawned)}.log")
        self.procs.append(proc)
        self.daemons.append(proc)
        return proc

    async def start(self, count: int) -> None:
        for proc in [self.spawn() for _ in range(count)]:
            await wait_events(proc, "daemon_ready", timeout=60)

    async def make_due(self) -> None:
        """Every job with nothing queued or running is due now (no piles of overlap-skipped rows)."""
        await self.db.execute(
            "UPDATE batch_config c SET next_run_at = now() WHERE NOT EXISTS (SELECT 1 FROM batch_runs r "
            "WHERE r.job_name = c.job_name AND r.status IN ('queued', 'running'))")

    async def drive(self, kills: int, fake: FakeDataSync, every: tuple[float, float]) -> None:
        """Keep the jobs due and new events arriving; SIGKILL a random ready daemon every few seconds."""
        while len(self.report.kills) < kills:
            until = time.monotonic() + self.rng.uniform(*every)
            while time.monotonic() < until:
                await self.make_due()
                if self.rng.random() < 0.3:
                    fake.append(self.rng.randint(1, 40))
                await asyncio.sleep(0.2)  # the pace of the load driven between kills (no wait for anything)
            await self.kill_one()

    async def kill_one(self) -> None:
        ready = [d for d in self.daemons if any(e.get("event") == "daemon_ready" for e in d.events())]
        victim = self.rng.choice(ready)
        victim.signal(signal.SIGKILL)
        self.report.kills.append(Kill(victim.pid, time.time()))
        assert await wait_exit(victim, 10) == -signal.SIGKILL
        self.daemons.remove(victim)
        self.spawn()

    async def settle(self, timeout: float) -> None:
        """Wait until nothing is queued or running, then one more DataSync run after the last append."""
        await poll(self.db, "SELECT count(*) = 0 FROM batch_runs WHERE status IN ('queued', 'running')",
                   timeout=timeout, interval=0.2)
        last = await self.db.fetchval("SELECT max(id) FROM batch_runs")
        await self.db.execute("UPDATE batch_config SET next_run_at = now() WHERE job_name = 'datasync'")
        await poll(self.db, "SELECT count(*) FROM batch_runs WHERE job_name = 'datasync' AND id > $1 "
                            "AND status = 'succeeded'", last, timeout=timeout, interval=0.2)

    async def stop(self) -> None:
        """SIGTERM every daemon once it is ready (before that, Python's default SIGTERM action applies)."""
        for proc in self.daemons:
            await wait_events(proc, "daemon_ready", timeout=60)
        for proc in self.daemons:
            proc.signal(signal.SIGTERM)
        for proc in self.daemons:
            code = await wait_exit(proc, 30)
            assert code == 0, f"exit {code}:\n{proc.tail()}"


async def run_chaos(db: Any, database_url: str, redis_url: str, tmp_path: Path, procs: list[Proc], *,
                    kills: int, daemons: int = 3, every: tuple[float, float] = (1.5, 3.0),
                    seed: int | None = None) -> ChaosReport:
    """The whole exercise: start, drive with ``kills`` SIGKILLs, settle, check. Returns the report."""
    await db.execute("TRUNCATE events")
    async with FakeDataSync(FAKE) as fake:
        config = write_config(tmp_path / "chaos.toml", chaos_jobs(fake.url))
        env = batcher_env(database_url, redis_url, config, tmp_path, BATCHER_CONCURRENCY="4",
                          DATASYNC_API_KEY=API_KEY)
        chaos = Chaos(db, env, tmp_path, procs, seed)
        await chaos.start(daemons)
        await chaos.drive(kills, fake, every)
        await chaos.settle(timeout=120)
        await chaos.stop()
        await check_tables(db, fake)
        check_429_pauses(fake.log)
    await check_outcome(db, chaos.report)
    return chaos.report


async def check_outcome(db: Any, report: ChaosReport) -> None:
    """The data and run checks of the module docstring; fills the report's failover times."""
    runs = [dict(r) for r in await db.fetch("SELECT * FROM batch_runs WHERE status <> 'skipped' ORDER BY id")]
    report.runs = len(runs)
    assert not [r["id"] for r in runs if r["status"] in ("running", "queued")]
    assert_no_overlap(runs)
    await _check_synthetic_chains(db, runs)
    by_id = {r["id"]: r for r in runs}
    retries = {r["retry_of"]: r for r in runs if r["retry_of"] is not None}
    dead = [r for r in runs if (r["status"], r["reason"]) == ("failed", "abandoned")]
    report.abandoned = len(dead)
    missing = [r["id"] for r in dead if r["id"] not in retries]
    assert not missing, f"abandoned runs without a retry: {missing}"
    last_of_chain = {r["root_run_id"] or r["id"]: r for r in runs}  # ordered by id: the last one wins
    unfinished = [(root, r["status"], r["reason"]) for root, r in last_of_chain.items() if r["status"] != "succeeded"]
    assert not unfinished, f"chains that did not end succeeded: {unfinished}"
    for kill in report.kills:
        for run in dead:
            if f":{kill.pid}:" in (run["worker_id"] or ""):
                retry = retries[run["id"]]
                assert retry["started_at"] is not None, retry
                report.failovers.append(retry["started_at"].timestamp() - kill.at)
    assert len(report.failovers) == len(dead), "every abandoned run belonged to a killed daemon"
    assert all(by_id[r["retry_of"]]["job_name"] == r["job_name"] for r in retries.values())


async def _check_synthetic_chains(db: Any, runs: list[dict[str, Any]]) -> None:
    """Each synthetic chain succeeded, with exactly its RECORDS rows (seq 0..RECORDS-1, each once) and
    run counters that add up to RECORDS (no batch counted twice); no row outside those chains."""
    chains: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r["job_type"] == "synthetic":
            chains[r["root_run_id"] or r["id"]].append(r)
    rows = {r["scope_key"]: r for r in await db.fetch(
        "SELECT scope_key, count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi "
        "FROM synthetic_records GROUP BY scope_key")}
    assert set(rows) == {str(root) for root in chains}, "rows only from the chains, every chain has rows"
    for root, chain in chains.items():
        assert chain[-1]["status"] == "succeeded", [(r["id"], r["status"], r["reason"]) for r in chain]
        got = rows[str(root)]
        assert (got["n"], got["d"], got["lo"], got["hi"]) == (RECORDS, RECORDS, 0, RECORDS - 1), (root, got)
        assert sum(r["records"] for r in chain) == RECORDS, [(r["id"], r["records"]) for r in chain]


def check_429_pauses(log: list[dict[str, Any]]) -> None:
    """After a 429 no request (from any daemon: the pause is shared) reached the fake before its reset."""
    for before, after in itertools.pairwise(log):
        if before["status"] == 429:
            assert after["t"] >= before["reset_at"], (before, after)


def assert_no_overlap(runs: list[dict[str, Any]]) -> None:
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r["started_at"] is not None:
            by_job[r["job_name"]].append(r)
    for job, items in by_job.items():
        items.sort(key=lambda r: r["started_at"])
        for a, b in itertools.pairwise(items):
            assert a["finished_at"] is not None and a["finished_at"] <= b["started_at"], \
                f"{job}: run {a['id']} [{a['started_at']}, {a['finished_at']}) overlaps run {b['id']}"


def kills_from_environment(default: int) -> int:
    return int(os.environ.get("CHAOS_KILLS", default))
