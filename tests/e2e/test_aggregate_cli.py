"""``batcher aggregate`` and ``batcher aggregate-status`` called in-process (``batcher.cli.main``).

The tests are synchronous because the CLI calls ``asyncio.run`` itself and installs signal handlers (main
thread only); the environment points at the session's PostgreSQL database, its Redis db and a temporary
TOML holding the usage job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from batcher.cli import main
from tests.e2e.procs import write_config
from tests.handlers.test_usage import DATES, MALFORMED, seed

USAGE_JOB = {"type": "usage_aggregation", "interval_minutes": 60,
             "params": {"batch_size": 500, "chunk_size": 100}}


class Cli:
    """Runs ``batcher ARGS``; returns (exit code, last stdout JSON or None, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], database_url: str) -> None:
        self.capsys = capsys
        self.database_url = database_url

    def fetchval(self, query: str, *args: Any) -> Any:
        async def run() -> Any:
            conn = await asyncpg.connect(self.database_url)
            try:
                return await conn.fetchval(query, *args)
            finally:
                await conn.close()

        return asyncio.run(run())

    def __call__(self, *argv: str) -> tuple[int, Any, str]:
        self.capsys.readouterr()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        lines = [ln for ln in out.splitlines() if ln.strip()]
        return code, json.loads(lines[-1]) if lines else None, err


@pytest.fixture
async def cli(db: Any, redis_db: redis.Redis, database_url: str, redis_url: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    await db.execute("TRUNCATE merchant_usage")
    for name in ("ENABLE_USAGE_AGGREGATION", "USAGE_AGGREGATION_INTERVAL", "DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    config = write_config(tmp_path / "batcher.toml", {"usage": USAGE_JOB})
    env = {"BATCHER_DATABASE_URL": database_url, "BATCHER_REDIS_URL": redis_url,
           "BATCHER_CONFIG": str(config), "BATCHER_DATA_DIR": str(tmp_path), "BATCHER_API_PORT": "0",
           "BATCHER_LOG_FORMAT": "json",
           "BATCHER_LEASE_SECONDS": "10"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cli = Cli(capsys, database_url)
    code, _, err = await asyncio.to_thread(cli, "jobs", "sync")  # what the daemon does at start
    assert code == 0, err
    return cli


def test_aggregate_then_status_before_and_after_a_mismatch(cli: Cli, redis_db: redis.Redis) -> None:
    """Status reports missing rows before the first run (exit 0), nothing after it; more INCRBYs make it
    report the difference and exit 1; ``aggregate --merchant M --date D`` fixes exactly that row; a row
    whose key expired is reported apart, without failing the status."""
    expected = seed(redis_db)
    code, report, _ = cli("aggregate-status", "2025-11-02")
    assert code == 0 and report["totals"]["missing"] == 1000 and not report["in_sync"]
    code, summary, err = cli("aggregate", "--from", "2025-11-01", "--to", "2025-11-03")
    assert code == 0, err
    assert summary["status"] == "succeeded" and summary["records"] == len(expected)
    assert summary["malformed_keys"] == len(MALFORMED) and summary["dead_letters"] == len(MALFORMED)
    assert summary["params"] == {"start": "2025-11-01", "end": "2025-11-03"}
    code, report, _ = cli("aggregate-status", "2025-11-02")
    assert code == 0 and report["in_sync"] and report["totals"]["rows"] == report["totals"]["keys"] == 1000
    assert report["metrics"]["tokens"]["last_aggregated_at"] is not None
    redis_db.incrby("usage:merchant_007:2025-11-02:tokens", 3)
    code, report, _ = cli("aggregate-status", "2025-11-02")
    assert code == 1 and report["totals"]["different"] == 1
    assert report["differences"][0]["merchant"] == "merchant_007"
    code, summary, _ = cli("aggregate", "--merchant", "merchant_007", "--date", "2025-11-02")
    assert code == 0 and summary["records"] == 5
    redis_db.delete("usage:merchant_009:2025-11-02:queries")
    code, report, _ = cli("aggregate-status", "2025-11-02")
    assert code == 0 and report["totals"]["different"] == 0 and report["totals"]["expired"] == 1
    value = cli.fetchval("SELECT value FROM merchant_usage WHERE merchant_id = 'merchant_007' "
                              "AND usage_date = $1 AND metric_type = 'tokens'", DATES[1])
    assert value == expected[("merchant_007", DATES[1], "tokens")] + 3


def test_aggregate_defaults_to_yesterday_utc(cli: Cli, redis_db: redis.Redis) -> None:
    """Without dates, ``aggregate`` runs yesterday (UTC) and only yesterday."""
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    redis_db.set(f"usage:m1:{yesterday.isoformat()}:queries", 4)
    redis_db.set(f"usage:m1:{(yesterday - dt.timedelta(days=1)).isoformat()}:queries", 5)
    code, summary, _ = cli("aggregate")
    assert code == 0 and summary["params"] == {"date": yesterday.isoformat()} and summary["records"] == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["aggregate", "--date", "2025-13-01"], "'2025-13-01' is not a valid date"),
    (["aggregate", "--date", "20251101"], "is not a valid date (YYYY-MM-DD)"),
    (["aggregate", "--from", "2025-11-05", "--to", "2025-11-01"],
     "--from 2025-11-05 is after --to 2025-11-01"),
    (["aggregate", "--from", "2024-01-01", "--to", "2025-01-01"],
     "spans 367 days (more than 366); add --yes"),
    (["aggregate", "--from", "2025-11-01"], "--from and --to go together"),
    (["aggregate", "--date", "2025-11-01", "--from", "2025-11-01", "--to", "2025-11-02"],
     "cannot be combined"),
    (["aggregate", "--merchant", "a:b"], "is not a merchant id"),
    (["aggregate-status", "2025-02-30"], "'2025-02-30' is not a valid date"),
    (["aggregate-status", "2025-11-01", "--merchant", "a:b"], "is not a merchant id"),
])
def test_bad_input_exits_2_with_a_specific_message(argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Bad dates, reversed or over-long ranges and bad merchants exit 2 before touching any service."""
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_exit_2_unless_exactly_one_usage_job(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  redis_db: redis.Redis) -> None:
    """No usage_aggregation job, or several without --job, is a configuration error (exit 2); --job
    picks one of several; a range over 366 days runs with --yes. The jobs are batch_config's: a usage job
    only in the caller's file is refused (exit 2) until the daemon or `batcher jobs sync` stores it."""
    monkeypatch.setenv("BATCHER_CONFIG", str(write_config(tmp_path / "none.toml", {})))
    assert cli("jobs", "sync")[0] == 0
    code, _, err = cli("aggregate", "--date", "2025-11-01")
    assert code == 2 and "no usage_aggregation job is configured" in err
    two = write_config(tmp_path / "two.toml", {"usage": USAGE_JOB, "usage-eu": USAGE_JOB})
    monkeypatch.setenv("BATCHER_CONFIG", str(two))
    code, _, err = cli("aggregate", "--job", "usage-eu", "--date", "2025-11-01")
    assert code == 2 and "job 'usage-eu' is in batcher.toml but not in the database" in err, err
    assert cli("jobs", "sync")[0] == 0
    code, _, err = cli("aggregate", "--date", "2025-11-01")
    assert code == 2 and "several usage_aggregation jobs" in err and "--job" in err
    code, summary, _ = cli("aggregate", "--from", "2024-01-01", "--to", "2025-01-01", "--yes",
                                 "--job", "usage-eu")
    assert code == 0 and summary["job"] == "usage-eu"
