"""``batcher run-job docker-hub-pull …`` and ``batcher run-job tracked-apps-check …`` as real processes
(``python -m batcher``), as a user types them, against the fake Docker Hub and GitHub (issue 18)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from batcher.fakes.dockerhub import FakeDockerHub
from batcher.fakes.github import FakeGitHub
from tests.e2e.procs import Proc, batcher_env, write_config


async def run_job(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = Proc(["run-job", *args], env, tmp_path / f"{args[0]}.log")
    try:
        code = await asyncio.to_thread(proc.wait, 60)  # the fakes keep serving on this loop meanwhile
        return code, proc.stdout_last_json(), proc.tail()
    finally:
        proc.close()


async def test_run_job_docker_hub_pull_and_tracked_apps_check_from_the_shell(
        db: Any, database_url: str, redis_url: str, redis_db: Any, tmp_path: Path) -> None:
    """Both commands of the issue's acceptance exit 0 with a succeeded summary and fill their tables."""
    await db.execute("TRUNCATE docker_image_tags, docker_image_updates, tracked_apps")
    await db.execute("INSERT INTO tracked_apps (name, source, current_version) "
                     "VALUES ('app', 'github:acme/app', '1.2')")
    env = batcher_env(database_url, redis_url, write_config(tmp_path / "batcher.toml", {}), tmp_path)
    nginx = {f"1.{i}": f"sha256:{i:064x}" for i in range(120)}
    async with FakeDockerHub({"library/nginx": nginx}) as hub, \
            FakeGitHub({"acme/app": [("v1.2.0", False), ("v1.3.0", False)]}) as gh:
        code, summary, log = await run_job(env, tmp_path, "docker-hub-pull", "--param", f"base_url={hub.url}",
                                           "--param", 'repositories=["library/nginx"]')
        assert code == 0 and summary["status"] == "succeeded" and summary["records"] == 120, log
        code, summary, log = await run_job(env, tmp_path, "tracked-apps-check", "--param", f"github_base={gh.url}")
        assert code == 0 and summary["status"] == "succeeded", log
    assert await db.fetchval("SELECT count(*) FROM docker_image_tags WHERE repository = 'library/nginx'") == 120
    row = await db.fetchrow("SELECT latest_version, update_available FROM tracked_apps WHERE name = 'app'")
    assert (row["latest_version"], row["update_available"]) == ("v1.3.0", True)
