"""A harness to run a handler against real PostgreSQL (and Redis, and fake HTTP servers) in tests.

``run_job_once`` drives one foreground run through the real path (ad-hoc job row, worker liveness lock,
claim, fenced commits, final status) without the CLI or embedded servers, and returns the run summary —
the same dict ``batcher run-job`` prints. aiohttp.web fakes for third-party APIs live beside their tests
or in this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from batcher.app import Config, open_services
from batcher.jobs import parse_jobs
from batcher.models import Services
from batcher.registry import load_registry
from batcher.settings import Settings, load_settings


def test_settings(database_url: str, redis_url: str, *, jobs: Mapping[str, Any] | None = None,
                  rate_limits: Mapping[str, Any] | None = None, lease_seconds: float = 10.0,
                  data_dir: Path | None = None) -> Settings:
    """Settings for tests: explicit URLs (never embedded servers), short leases, no config file."""
    env = {"BATCHER_DATABASE_URL": database_url, "BATCHER_REDIS_URL": redis_url,
           "BATCHER_LEASE_SECONDS": str(lease_seconds), "BATCHER_API_PORT": "0",
           "BATCHER_CONFIG": "", "BATCHER_DATA_DIR": str(data_dir or Path(".batcher-test"))}
    settings = load_settings(env, config_path=_empty_toml())
    return settings.model_copy(update={"jobs": dict(jobs or {}), "rate_limits": _limits(rate_limits)})


def _limits(rate_limits: Mapping[str, Any] | None) -> dict[str, Any]:
    from batcher.settings import RateLimitSettings

    return {ns: RateLimitSettings(**v) if isinstance(v, Mapping) else v for ns, v in (rate_limits or {}).items()}


def _empty_toml() -> Path:
    import tempfile

    path = Path(tempfile.gettempdir()) / "batcher-empty.toml"
    if not path.exists():
        path.write_text("")
    return path


def test_config(settings: Settings) -> Config:
    registry = load_registry()
    return Config(settings, registry, parse_jobs(settings.jobs, registry))


@contextlib.asynccontextmanager
async def test_services(settings: Settings, *, http: bool = True, sync: bool = True) -> AsyncIterator[Services]:
    """Services on the test database (migrated, the settings' jobs synced), with the HTTP runtime."""
    async with open_services(test_config(settings), start_embedded=False, sync=sync, http=http) as services:
        yield services


async def run_job_once(settings: Settings, job: str, params: Mapping[str, Any] | None = None, *,
                       job_name: str | None = None, literal_secrets: Mapping[str, str] | None = None,
                       ) -> dict[str, Any]:
    """One foreground run of a configured job or an ad-hoc job type; returns the run summary."""
    from batcher.runjob import run_foreground

    config = test_config(settings)
    async with open_services(config, start_embedded=False, sync=True, http=True) as services:
        return await run_foreground(services, config, job, job_name=job_name, params=dict(params or {}),
                                    literal_secrets=dict(literal_secrets or {}), wait=True,
                                    handle_signals=False)


test_settings.__test__ = False  # type: ignore[attr-defined]
test_config.__test__ = False  # type: ignore[attr-defined]
test_services.__test__ = False  # type: ignore[attr-defined]
