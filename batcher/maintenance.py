"""The built-in daily maintenance (DESIGN §5): prune finished runs (their logs go by cascade), resolved dead
letters older than ``runs_retention_days``, and the run-scoped checkpoints of chains that will not resume.
Daemons schedule it daily; an advisory lock makes one daemon do it when several share a database.

Runs and dead letters go in batches of :data:`PRUNE_BATCH` rows, each its own short transaction, so a large
backlog never becomes one long transaction that holds back vacuum on the hottest table. The lock is a
session lock on the one connection that runs every batch (an xact lock would end with the first batch).
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import structlog

from batcher.store import DB_ERRORS, Q

log = structlog.get_logger("batcher.maintenance")
MAINTENANCE_LOCK_KEY = 0x6D61696E74  # "maint"
PRUNE_BATCH = 1000


async def run_maintenance(pool: Any, retention_days: int) -> dict[str, int] | None:
    """Prune what is older than the retention; None when another daemon holds the maintenance lock."""
    async with pool.acquire() as conn:
        if not await conn.fetchval(Q["try_maintenance_lock"], MAINTENANCE_LOCK_KEY):
            return None
        try:
            runs = await _prune_in_batches(conn, "prune_finished_runs", retention_days)
            letters = await _prune_in_batches(conn, "prune_resolved_dead_letters", retention_days)
            checkpoints = _count(await conn.execute(Q["prune_dead_chain_checkpoints"], retention_days))
        finally:
            with suppress(*DB_ERRORS):  # a broken connection has dropped the lock anyway
                await conn.execute(Q["maintenance_unlock"], MAINTENANCE_LOCK_KEY)
    result = {"runs_pruned": runs, "dead_letters_pruned": letters, "checkpoints_pruned": checkpoints,
              "retention_days": retention_days}
    log.info("maintenance_finished", **result)
    return result


async def _prune_in_batches(conn: Any, query: str, retention_days: int) -> int:
    """Run a ``DELETE … LIMIT $2`` query (autocommit: one transaction per call) until a batch comes up short."""
    total = 0
    while True:
        deleted = _count(await conn.execute(Q[query], retention_days, PRUNE_BATCH))
        total += deleted
        if deleted < PRUNE_BATCH:
            return total


def _count(status: str) -> int:
    """The row count of a command status such as ``DELETE 12``."""
    return int(status.rsplit(" ", 1)[-1]) if status and status[-1].isdigit() else 0
