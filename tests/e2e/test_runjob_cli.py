"""The run-job / trigger / runs / cancel / pause commands in-process: summary contract and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batcher.cli import main
from tests.e2e.procs import write_config

SUMMARY_KEYS = {"run_id", "job", "status", "records", "dead_letters", "api_calls", "ingress_bytes",
                "runtime_ms", "errors"}


@pytest.fixture
def cli(db: Any, database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, list[Any], str]]:
    """Run ``batcher ARGS`` in-process against the test services; returns (exit code, JSON lines, stderr)."""
    config = write_config(tmp_path / "batcher.toml", {
        "nightly": {"type": "synthetic", "interval_minutes": 1440, "params": {"records": 120, "batch_size": 50}},
        "broken": {"type": "synthetic", "interval_minutes": 1440,
                   "params": {"records": 100, "batch_size": 10, "fail_at_batch": 3, "fail_mode": "permanent"}},
    })
    for key in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("BATCHER_DATABASE_URL", database_url)
    monkeypatch.setenv("BATCHER_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCHER_CONFIG", str(config))
    monkeypatch.setenv("BATCHER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BATCHER_LOG_FORMAT", "json")

    synced: list[bool] = []

    def run(*args: str) -> tuple[int, list[Any], str]:
        if not synced:  # as the daemon does at start: one-off commands never sync the file's jobs
            synced.append(main(["jobs", "sync"]) == 0)
        code = main(list(args))
        out, err = capsys.readouterr()
        lines = [json.loads(line) for line in out.splitlines() if line.strip().startswith(("{", "["))]
        return code, lines, err

    return run


def test_run_job_success_prints_the_summary_as_last_line(cli: Callable[..., Any]) -> None:
    """A configured job run in the foreground exits 0; the last stdout line is the summary with every
    contract key, counting the 120 records."""
    code, lines, _ = cli("run-job", "nightly")
    assert code == 0
    assert set(lines[-1]) >= SUMMARY_KEYS and lines[-1]["status"] == "succeeded"
    assert lines[-1]["records"] == 120 and lines[-1]["job"] == "nightly" and lines[-1]["errors"] == []


def test_run_job_failure_exits_1_with_errors_and_keeps_committed_batches(cli: Callable[..., Any], db: Any) -> None:
    """A permanent failure at batch 3 exits 1; the summary says failed with the error message; the two
    batches committed before it stay; no retry is queued for a run-job."""
    code, lines, _ = cli("run-job", "broken")
    assert code == 1
    summary = lines[-1]
    assert summary["status"] == "failed" and summary["records"] == 20
    assert any("synthetic failure at batch 3" in e for e in summary["errors"])
    assert len(summary["errors"]) <= 20


def test_run_job_errors_list_is_capped_at_20(cli: Callable[..., Any]) -> None:
    """The summary's dead-letter reasons never exceed 20 messages (every 3rd record poisoned → many
    reasons); they are not errors (issue 15), so ``errors`` stays empty."""
    code, lines, _ = cli("run-job", "synthetic", "--job-name", "poisoned", "--param", "records=300",
                         "--param", "poison_every=3", "--param", "batch_size=30")
    assert code == 0 and lines[-1]["dead_letters"] == 100
    assert 1 <= len(lines[-1]["dead_letter_reasons"]) <= 20 and lines[-1]["errors"] == []


def test_run_job_of_an_adhoc_type_with_its_own_name(cli: Callable[..., Any], db: Any) -> None:
    """``run-job synthetic --job-name x`` creates an ad-hoc job (enabled=false, adhoc=true) that no
    daemon schedules, with its own checkpoints."""
    code, lines, _ = cli("run-job", "synthetic", "--job-name", "adhoc-x", "--param", "records=10")
    assert code == 0 and lines[-1]["job"] == "adhoc-x"
    code, lines, _ = cli("jobs", "adhoc-x")
    assert lines[0]["enabled"] is False and lines[0]["adhoc"] is True


@pytest.mark.parametrize("args, fragment", [
    (("run-job", "no-such-thing"), "neither a configured job nor a job type"),
    (("run-job", "synthetic", "--param", "records=-5"), "records"),
    (("run-job", "synthetic", "--param", "bogus=1"), "bogus"),
    (("run-job", "synthetic", "--param", "nokeyvalue"), "KEY=VALUE"),
    (("trigger", "nightly", "--param", "token=literal"), "literal secret"),
])
def test_usage_and_configuration_errors_exit_2(cli: Callable[..., Any], args: tuple[str, ...], fragment: str) -> None:
    """Unknown jobs, params the handler rejects, malformed --param and literal secrets in persisted params
    exit 2 with a one-line reason naming the problem."""
    code, _, err = cli(*args)
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_run_job_literal_secret_is_used_but_never_stored(cli: Callable[..., Any], db: Any) -> None:
    """A literal secret param on a foreground run-job is accepted and never persisted or printed."""
    secret = "s3cr3t-literal-token-value"
    code, lines, err = cli("run-job", "synthetic", "--param", f"token={secret}", "--param", "records=5")
    assert code == 0 and secret not in json.dumps(lines) and secret not in err


async def test_run_job_no_wait_exits_1_when_a_live_worker_holds_the_job(cli: Callable[..., Any], db: Any) -> None:
    """While a live worker runs the job, ``run-job --no-wait`` says so and exits 1."""
    from batcher.store import Q
    from batcher.worker import Worker

    worker = Worker(await _url(db), db, lease_seconds=30, queues=None)
    await worker.start()
    try:
        await asyncio.to_thread(cli, "trigger", "nightly")  # queues a run
        claimed = await db.fetch(Q["claim_runs"], worker.worker_id, 1, 30.0, None, 1.0)
        assert claimed
        code, _, err = await asyncio.to_thread(cli, "run-job", "nightly", "--no-wait")
        assert code == 1 and "is running on live worker" in err
    finally:
        await worker.stop()


async def _url(pool: Any) -> str:
    import os

    return os.environ["BATCHER_DATABASE_URL"]


def test_trigger_runs_and_cancel_and_pause(cli: Callable[..., Any]) -> None:
    """trigger queues a manual run (the same params again return the same id); runs lists it; runs show
    gives the record with logs; cancel of a queued run cancels it; pause/resume flip the job."""
    code, lines, _ = cli("trigger", "nightly", "--param", "value_seed=7")
    assert code == 0 and lines[-1]["status"] == "queued"
    run_id = lines[-1]["run_id"]
    code, lines, _ = cli("trigger", "nightly", "--param", "value_seed=7")
    assert lines[-1]["run_id"] == run_id and lines[-1]["existing"] is True
    code, lines, _ = cli("runs", "--job", "nightly")
    assert code == 0 and lines[0]["id"] == run_id and lines[0]["status"] == "queued"
    code, lines, _ = cli("runs", "show", str(run_id))
    assert code == 0 and lines[0]["id"] == run_id and "logs" in lines[0]
    code, lines, _ = cli("cancel", str(run_id))
    assert code == 0 and lines[-1]["result"] == "cancelled"
    code, _, err = cli("cancel", str(run_id))
    assert code == 1 and "already finished" in err
    assert cli("pause", "nightly")[0] == 0
    assert cli("jobs", "nightly")[1][0]["paused"] is True
    assert cli("resume", "nightly")[0] == 0
    assert cli("jobs", "nightly")[1][0]["paused"] is False
    code, lines, _ = cli("jobs", "nightly", "--next", "3")
    assert code == 0


def test_dead_letters_list_replay_purge_through_the_cli(cli: Callable[..., Any], db: Any) -> None:
    """Poisoned rows land in dead letters (`dead-letters list` shows them with the database's reason);
    after the fix (here: the rows' NUL removed in place) `dead-letters replay` writes them and marks them
    resolved, as a run of the job (succeeded/replay); `dead-letters purge` deletes what is left for the job."""
    code, lines, _ = cli("run-job", "synthetic", "--job-name", "poison", "--param", "records=40",
                         "--param", "poison_every=10", "--param", "batch_size=20")
    assert code == 0 and lines[-1]["dead_letters"] == 4 and lines[-1]["records"] == 36
    code, lines, _ = cli("dead-letters", "list", "--job", "poison")
    assert code == 0 and len(lines) == 4 and all(r["origin"] == "database" for r in lines)
    assert all("0x00" in r["reason"] or "null" in r["reason"].lower() for r in lines), lines[0]["reason"]
    db_fix = "UPDATE dead_letters SET payload = replace(payload, '\\u0000', '') WHERE job_name = 'poison'"
    cli_fix = _run_sql(db, db_fix)
    assert cli_fix
    code, lines, _ = cli("dead-letters", "replay", "poison")
    assert code == 0 and lines[-1]["resolved"] == 4
    replay_run = lines[-1]["run_id"]  # the replay is a run of the job (issue 14 #12)
    assert _run_sql(db, f"SELECT status || '/' || reason FROM batch_runs WHERE id = {int(replay_run)}") == \
        "succeeded/replay"
    assert _run_sql(db, "SELECT count(*) FROM dead_letters WHERE job_name = 'poison' AND resolved_at IS NULL") == 0
    code, lines, _ = cli("dead-letters", "purge", "poison")
    assert code == 0 and lines[-1]["purged"] == 4


def _run_sql(pool: Any, sql: str) -> Any:
    """Run one statement on the test database from a sync test (on a private loop)."""
    import asyncpg

    async def go() -> Any:
        dsn = os.environ["BATCHER_DATABASE_URL"]
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql) if sql.lstrip().upper().startswith("SELECT") else await conn.execute(sql)
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(go())
    finally:
        loop.close()
