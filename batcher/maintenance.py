"""The built-in daily maintenance (DESIGN §5): prune finished runs (their logs go by cascade) and resolved
dead letters older than ``runs_retention_days``. Daemons schedule it daily; an advisory lock makes one
daemon do it when several share a database."""

from __future__ import annotations

from typing import Any

import structlog

from batcher.store import Q

log = structlog.get_logger("batcher.maintenance")
MAINTENANCE_LOCK_KEY = 0x6D61696E74  # "maint"


async def run_maintenance(pool: Any, retention_days: int) -> dict[str, int] | None:
    """Prune what is older than the retention; None when another daemon holds the maintenance lock."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(Q["try_maintenance_lock"], MAINTENANCE_LOCK_KEY):
            return None
        runs = _count(await conn.execute(Q["prune_finished_runs"], retention_days))
        letters = _count(await conn.execute(Q["prune_resolved_dead_letters"], retention_days))
    result = {"runs_pruned": runs, "dead_letters_pruned": letters, "retention_days": retention_days}
    log.info("maintenance_finished", **result)
    return result


def _count(status: str) -> int:
    """The row count of a command status such as ``DELETE 12``."""
    return int(status.rsplit(" ", 1)[-1]) if status and status[-1].isdigit() else 0
