"""The usage job's original environment names: ENABLE_USAGE_AGGREGATION and USAGE_AGGREGATION_INTERVAL.

They are folded into every ``usage_aggregation`` job's file entry before hashing (DESIGN §3): changing
them counts as a file change, and an API edit wins until they (or the file) change again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batcher.errors import ConfigError
from batcher.settings import fold_job_env_aliases, load_settings
from batcher.testing import test_services

JOBS = {"usage": {"type": "usage_aggregation", "cron": "0 * * * *"},
        "other": {"type": "synthetic", "interval_minutes": 5}}


def test_aliases_set_enabled_and_interval_of_usage_jobs_only() -> None:
    """false disables; milliseconds round up to whole minutes and replace a cron; other jobs untouched."""
    jobs, applied = fold_job_env_aliases(JOBS, {"ENABLE_USAGE_AGGREGATION": "false",
                                                "USAGE_AGGREGATION_INTERVAL": "90001"})
    assert jobs["usage"] == {"type": "usage_aggregation", "enabled": False, "interval_minutes": 2}
    assert jobs["other"] == JOBS["other"]
    assert applied == {"usage": {"enabled": False, "interval_minutes": 2}}
    assert fold_job_env_aliases(JOBS, {"ENABLE_USAGE_AGGREGATION": "TRUE"})[0]["usage"]["enabled"] is True
    assert fold_job_env_aliases(JOBS, {}) == (JOBS, {})


@pytest.mark.parametrize(("env", "message"), [
    ({"ENABLE_USAGE_AGGREGATION": "maybe"}, "must be true or false"),
    ({"USAGE_AGGREGATION_INTERVAL": "1.5"}, "positive number of milliseconds"),
    ({"USAGE_AGGREGATION_INTERVAL": "0"}, "positive number of milliseconds"),
    ({"USAGE_AGGREGATION_INTERVAL": str(1441 * 60_000)}, "more than 1440"),
])
def test_bad_alias_values_are_config_errors(env: dict[str, str], message: str) -> None:
    """A bad value names the variable and the problem (exit 2 at start-up)."""
    with pytest.raises(ConfigError, match=message) as info:
        fold_job_env_aliases(JOBS, env)
    assert info.value.key in env


async def test_alias_change_counts_as_a_file_change(db: Any, database_url: str, redis_url: str,
                                                    tmp_path: Path) -> None:
    """Synced with ENABLE_USAGE_AGGREGATION=false the job is disabled; an API edit then survives a restart
    with the same environment, and loses to a changed USAGE_AGGREGATION_INTERVAL."""
    toml = tmp_path / "batcher.toml"
    toml.write_text('[jobs.usage]\ntype = "usage_aggregation"\ninterval_minutes = 60\n')
    base = {"BATCHER_DATABASE_URL": database_url, "BATCHER_REDIS_URL": redis_url, "BATCHER_API_PORT": "0"}

    async def sync(**env: str) -> dict[str, Any]:
        settings = load_settings({**base, **env}, config_path=toml)
        async with test_services(settings, http=False):
            pass
        return dict(await db.fetchrow("SELECT enabled, interval_minutes FROM batch_config "
                                      "WHERE job_name = 'usage'"))

    assert await sync(ENABLE_USAGE_AGGREGATION="false") == {"enabled": False, "interval_minutes": 60}
    await db.execute("UPDATE batch_config SET enabled = true, interval_minutes = 7, source = 'api'")
    assert await sync(ENABLE_USAGE_AGGREGATION="false") == {"enabled": True, "interval_minutes": 7}
    assert await sync(ENABLE_USAGE_AGGREGATION="false", USAGE_AGGREGATION_INTERVAL="120000") == \
        {"enabled": False, "interval_minutes": 2}
