"""Preference-based scheduling: one derived job per preference group (see :mod:`batcher.derived`).

Users are grouped by (feature type, frequency, time of day, timezone) — their own ``user_preferences``
row, or the parent job's defaults for active users without one. An enabled configured job with a
``PREFERENCE_*`` batch type and no ``group`` is the parent (not scheduled itself): the scheduler keeps one
job per group with at least one active user, named ``{parent}@{frequency}-{HHMM}-{timezone with / as
-}``, whose params are the parent's plus ``group``; such a job processes only that group's users at its
run time (so a user whose preference changed is processed by their new group's job; no job needs to
change for it).

Schedules, in the group's timezone (wall-clock, DST-correct per batcher.schedule):
hourly ``M * * * *`` (real time); daily ``M H * * *``; weekly ``M H * * weekly_day``; biweekly the same in
every other week counted from ``biweekly_anchor``'s week (``every_weeks = 2``); monthly
``M H monthly_day * *`` (day 1–28, so every month has it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from batcher import DerivedJob
from handlers.agent_batch.cache import CACHE, data_versions
from handlers.agent_batch.params import FREQUENCIES, AgentParams
from handlers.agent_batch.sql import Q


def group_cron(frequency: str, time_of_day: str, weekly_day: int = 1, monthly_day: int = 1) -> tuple[str, int]:
    """(crontab, every_weeks) of a group."""
    hour, minute = (int(x) for x in time_of_day.split(":"))
    if frequency == "hourly":
        return f"{minute} * * * *", 1
    if frequency == "daily":
        return f"{minute} {hour} * * *", 1
    if frequency in ("weekly", "biweekly"):
        return f"{minute} {hour} * * {weekly_day}", 2 if frequency == "biweekly" else 1
    if frequency == "monthly":
        return f"{minute} {hour} {monthly_day} * *", 1
    raise ValueError(f"unknown frequency {frequency!r}")


def group_key(frequency: str, time_of_day: str, timezone: str) -> str:
    return f"{frequency}-{time_of_day.replace(':', '')}-{timezone.replace('/', '-')}"


def _setting(params: Mapping[str, Any], name: str) -> Any:
    return params.get(name, AgentParams.model_fields[name].default)


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


async def derive_group_jobs(reader: Any, params: Mapping[str, Any]) -> list[DerivedJob] | None:
    """The parent's group jobs, or None when ``params`` is not a preference parent."""
    if not str(params.get("batch_type", "")).startswith("PREFERENCE_") or params.get("group"):
        return None
    feature = str(_setting(params, "feature_type"))
    defaults = (str(_setting(params, "default_frequency")), str(_setting(params, "default_time_of_day")),
                str(_setting(params, "default_timezone")))
    ttl = float(_setting(params, "cache_ttl_seconds"))
    versions = await data_versions(reader)
    args = (feature, defaults[0], dt.time.fromisoformat(defaults[1]), defaults[2])
    rows = await CACHE.get(("groups", *args), versions, ttl, reader.fetch, Q["groups"], *args)
    anchor_day = dt.date.fromisoformat(str(_setting(params, "biweekly_anchor")))
    jobs = []
    for r in rows:
        zone = _zone(r["timezone"])
        if r["frequency"] not in FREQUENCIES or zone is None:
            continue  # a row the database let through but no schedule can honour
        cron, weeks = group_cron(r["frequency"], r["time_of_day"], int(_setting(params, "weekly_day")),
                                 int(_setting(params, "monthly_day")))
        group = {"frequency": r["frequency"], "time_of_day": r["time_of_day"], "timezone": r["timezone"]}
        jobs.append(DerivedJob(key=group_key(r["frequency"], r["time_of_day"], r["timezone"]),
                               params={**params, "group": group}, cron=cron, timezone=r["timezone"],
                               every_weeks=weeks,
                               anchor=dt.datetime.combine(anchor_day, dt.time(0), tzinfo=zone)))
    return jobs
