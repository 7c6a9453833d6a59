"""Job dependencies (DESIGN §5): ``depends_on`` jobs must all succeed since the dependent's last run.

Called inside the transaction that records an upstream's final status, so the dependent's run is queued
(trigger ``dependency``) atomically with the last needed success; a final failure records the dependent
``skipped``/``upstream_failed``, a final cancel (by hand, or a shutdown with no retry)
``skipped``/``upstream_cancelled``. Dependent rows are locked, so concurrent upstream successes serialize.
"""

from __future__ import annotations

from typing import Any

import structlog

from batcher.store import Q

log = structlog.get_logger("batcher.dependencies")


async def on_upstream_success(conn: Any, job_name: str) -> list[int]:
    """Queue each dependent of ``job_name`` whose upstreams have all succeeded since its last run."""
    queued = []
    for dep in await conn.fetch(Q["dependents_of"], job_name):
        if not await conn.fetchval(Q["dependencies_satisfied"], dep["job_name"], list(dep["depends_on"])):
            continue
        if await conn.fetchval(Q["has_queued_dependency_run"], dep["job_name"]):
            continue
        run_id = await conn.fetchval(Q["insert_queued_run"], dep["job_name"], dep["job_type"], "dependency",
                                     dep["priority"], {}, 0.0, None, None, 1, 0, "dependency")
        queued.append(int(run_id))
        log.info("dependency_queued", job=dep["job_name"], upstream=job_name, run_id=run_id)
    if queued:
        await conn.execute(Q["notify_wakeup"], "")
    return queued


#: The reasons of a run that ended ``cancelled`` (batcher.runner): a cancel is not a failure.
CANCEL_REASONS = frozenset({"cancelled", "shutdown"})


def skip_reason(upstream_reason: str | None) -> str:
    """The dependents' skip reason for an upstream that ended for good with ``upstream_reason``."""
    return "upstream_cancelled" if upstream_reason in CANCEL_REASONS else "upstream_failed"


async def on_upstream_failure(conn: Any, job_name: str, run_id: int, reason: str | None) -> None:
    """Record every dependent of ``job_name`` skipped (the upstream failed or was cancelled for good):
    reason ``upstream_cancelled`` after a cancel, else ``upstream_failed``."""
    skip = skip_reason(reason)
    for dep in await conn.fetch(Q["dependents_of"], job_name):
        await conn.execute(Q["insert_dependency_skip"], dep["job_name"], dep["job_type"],
                           {"upstream": job_name, "upstream_run_id": run_id, "upstream_reason": reason}, skip)
        log.info("dependency_skipped", job=dep["job_name"], upstream=job_name, upstream_run_id=run_id, reason=skip)
