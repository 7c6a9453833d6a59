"""Derived jobs: jobs a handler maintains itself from one of its configured jobs (DESIGN §5 addition).

A handler that overrides :meth:`batcher.handler.Handler.derive_jobs` (the agent handler: one job per group
of user preferences) is asked on every scheduler tick — and at once after a ``NOTIFY batcher_wakeup``,
which its source tables' triggers send — which jobs each of its enabled configured jobs (the parent)
implies. They are ordinary ``batch_config`` rows (``source = 'derived'``, ``derived_from`` = the parent),
so the materializer, claims, retries and the API treat them like any job; the file sync never touches
them. A parent that derives jobs is scheduled through them only (its own ``next_run_at`` is cleared; a
manual trigger still runs it). A derived job no longer returned, or whose parent is gone, disabled,
orphaned or derives nothing, is disabled and marked orphaned (its runs stay); returned again, it is
enabled with a fresh next run.

Each process remembers what it wrote last, so an unchanged tick costs the parents' queries only. A
handler error skips the whole sync for that tick (logged): nothing is orphaned on a failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from batcher.handler import DerivedJob, Handler
from batcher.schedule import Schedule
from batcher.store import DB_ERRORS, Q

log = structlog.get_logger("batcher.derived")
_Plan = dict[str, list[tuple[Any, ...]]]


def derives_jobs(handler: type[Handler]) -> bool:
    return getattr(handler.derive_jobs, "__func__", None) is not getattr(Handler.derive_jobs, "__func__", None)


def derived_name(parent: str, key: str) -> str:
    return f"{parent}@{key}"


def _row(parent: str, job: DerivedJob, now: datetime) -> tuple[Any, ...]:
    anchor = job.anchor or datetime(2000, 1, 3, tzinfo=UTC)  # a Monday: stable when not given
    schedule = Schedule(job.interval_minutes, job.cron, job.timezone, anchor, job.every_weeks)
    return (derived_name(parent, job.key), parent, dict(job.params), job.interval_minutes, job.cron,
            job.timezone, job.every_weeks, anchor, schedule.next_after(now))


class DerivedJobs:
    """Keeps the derived jobs of a registry's handlers in step with their parents."""

    def __init__(self, registry: Mapping[str, type[Handler]]) -> None:
        self.registry = {name: h for name, h in registry.items() if derives_jobs(h)}
        self._last: Any = None

    async def sync(self, pool: Any) -> bool:
        """Derive and write what changed; True when something was written. Never raises for a handler's
        or the database's error (logged as ``derived_jobs_failed``): scheduling goes on."""
        if not self.registry:
            return False
        try:
            parents = await pool.fetch(Q["derived_parents"], list(self.registry))
            plan = await self._plan(pool, parents)
            fingerprint = (tuple(tuple(p)[:-1] for p in parents), {k: [r[:8] for r in v] for k, v in plan.items()})
            if fingerprint == self._last and not any(p["scheduled"] for p in parents if p["job_name"] in plan):
                return False
            await self._write(pool, plan)
            self._last = fingerprint
            log.info("derived_jobs_synced", parents=len(plan), jobs=sum(len(v) for v in plan.values()))
            return True
        except DB_ERRORS as exc:
            log.warning("derived_jobs_failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a handler's bug must not stop scheduling
            log.error("derived_jobs_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
        return False

    async def _plan(self, pool: Any, parents: Sequence[Mapping[str, Any]]) -> _Plan:
        now = datetime.now(UTC)
        plan: _Plan = {}
        for parent in parents:
            handler = self.registry[parent["job_type"]]
            jobs = await handler.derive_jobs(pool, parent["job_name"], dict(parent["params"] or {}))
            if jobs is not None:
                plan[parent["job_name"]] = sorted(_row(parent["job_name"], j, now) for j in jobs)
        return plan

    @staticmethod
    async def _write(pool: Any, plan: _Plan) -> None:
        async with pool.acquire() as conn, conn.transaction():
            for parent, rows in plan.items():
                for row in rows:
                    await conn.execute(Q["upsert_derived_job"], *row)
                await conn.execute(Q["orphan_derived_jobs"], parent, [r[0] for r in rows])
            await conn.execute(Q["orphan_parentless_derived_jobs"], list(plan))
            await conn.execute(Q["unschedule_parents"], list(plan))
