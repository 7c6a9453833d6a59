"""Issue 14, defect 8: cron walks are bounded for any expression and zone.

A job far behind its schedule (an outage, a pause) used to cost ~6 ms per occurrence for a fixed-hour
cron in a DST zone (every ``next_after`` enumerated six hours of wall times), i.e. 11 s per missed day of
``* 0-23 * * *`` Europe/Berlin, run inside the materialize transaction on the event loop. These tests pin
the work (APScheduler ``get_next_fire_time`` steps, and a generous CPU bound) for a year of missed
minutes, and that the fast paths agree with a brute-force enumeration around the DST changes of
Europe/Berlin 2026 (spring 2026-03-29 01:00Z, autumn 2026-10-25 01:00Z). Real timings: bench/cron_walk.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from batcher.schedule import CRON_WALK_CAP, Occurrences, Schedule, cron_trigger

BERLIN = "Europe/Berlin"
STEP_BUDGET = 12 * CRON_WALK_CAP // 10  # the capped count walk plus the searches for latest/previous/next
MINUTE = timedelta(minutes=1)
SETTLED = timedelta(hours=6)  # no DST shift reorders wall times further apart


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class StepBudgetExceeded(AssertionError):
    pass


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts APScheduler cron steps; raises once a test exceeds STEP_BUDGET (so the old, unbounded walk
    fails fast instead of running for minutes)."""
    counter = [0]
    original = CronTrigger.get_next_fire_time

    def counting(self: CronTrigger, previous: Any, now: datetime) -> Any:
        counter[0] += 1
        if counter[0] > STEP_BUDGET:
            raise StepBudgetExceeded(f"more than {STEP_BUDGET} cron steps")
        return original(self, previous, now)

    monkeypatch.setattr(CronTrigger, "get_next_fire_time", counting)
    yield counter


YEAR_CASES = [
    # expr, zone, now, latest, previous, next
    ("* * * * *", "UTC", utc(2026, 6, 1, 12, 0, 30),
     utc(2026, 6, 1, 12), utc(2026, 6, 1, 11, 59), utc(2026, 6, 1, 12, 1)),
    ("* 0-23 * * *", BERLIN, utc(2026, 6, 1, 12, 0, 30),
     utc(2026, 6, 1, 12), utc(2026, 6, 1, 11, 59), utc(2026, 6, 1, 12, 1)),
    # Saturday noon: the latest is Friday 18:59 CEST, the next Monday 08:00 CEST
    ("* 8-18 * * 1-5", BERLIN, utc(2026, 6, 6, 12),
     utc(2026, 6, 5, 16, 59), utc(2026, 6, 5, 16, 58), utc(2026, 6, 8, 6)),
]


@pytest.mark.parametrize(("expr", "tz", "now", "latest", "previous", "nxt"), YEAR_CASES)
def test_cron_walk_of_a_year_of_missed_minutes_is_bounded(
        steps: list[int], expr: str, tz: str, now: datetime, latest: datetime, previous: datetime,
        nxt: datetime) -> None:
    """A year of missed per-minute occurrences (across both DST changes): the count stops at the cap
    (``capped``: "≥ 10000"), the latest and previous occurrences at or before ``now`` and the next one
    after it are exact, within STEP_BUDGET APScheduler steps and well under 2 s of CPU."""
    schedule = Schedule(None, expr, tz, utc(2025, 1, 1))
    first = schedule.next_after(now - timedelta(days=365))
    assert first is not None
    started = time.process_time()
    occ = schedule.occurrences_until(first, now)
    after = schedule.next_after(max(now, occ.latest))
    cpu = time.process_time() - started
    assert (occ.count, occ.capped) == (CRON_WALK_CAP, True)
    assert (occ.latest, occ.previous, after) == (latest, previous, nxt)
    assert steps[0] <= STEP_BUDGET and cpu < 2.0, (steps[0], cpu)


def test_next_after_a_day_of_berlin_minutes_takes_one_step_each(steps: list[int]) -> None:
    """Away from a DST change a fixed-hour cron's next occurrence costs one APScheduler step (it used to
    enumerate ~360 wall times per call)."""
    schedule = Schedule(None, "* 0-23 * * *", BERLIN, utc(2026, 1, 1))
    at = utc(2026, 5, 1)
    for _ in range(1440):
        nxt = schedule.next_after(at)
        assert nxt == at + MINUTE
        at = nxt
    assert steps[0] <= 1440


# --------------------------------------------------------------------------- agreement with brute force

DST_EXPRS = ["* 0-23 * * *", "30 2 * * *", "0,30 2 * * *", "15,45 2 * * *", "*/7 1-3 * * *", "0 2 * * *",
             "59 1 * * *", "0 3 * * *"]


def brute_next(expr: str, tz_name: str, after: datetime) -> datetime:
    """DESIGN §5 by enumeration: every wall time of the cron from wall(after) - 3 h (up to 2 days on, or
    6 h past the best so far), each mapped to its first instant (fold 0; a missing wall time shifted by
    the gap), the earliest after ``after``."""
    tz = ZoneInfo(tz_name)
    walls = cron_trigger(expr, "UTC")
    wall = after.astimezone(tz).replace(tzinfo=UTC) - timedelta(hours=3)
    end = wall + timedelta(days=2)
    best: datetime | None = None
    while True:
        wall = walls.get_next_fire_time(None, wall + timedelta(microseconds=1))
        if wall > end or (best is not None and wall > best.astimezone(tz).replace(tzinfo=UTC) + SETTLED):
            break
        instant = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if instant > after and (best is None or instant < best):
            best = instant
    assert best is not None
    return best


def _around(change: datetime, every: timedelta = timedelta(minutes=7, seconds=30)) -> Iterator[datetime]:
    at = change - timedelta(hours=4)
    while at < change + timedelta(hours=5):
        yield at
        at += every


@pytest.mark.parametrize("expr", DST_EXPRS)
@pytest.mark.parametrize("change", [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)], ids=["spring", "autumn"])
def test_fast_next_after_agrees_with_brute_force_around_dst(expr: str, change: datetime) -> None:
    """Fixed-hour crons around both Berlin changes: next_after equals the brute-force DESIGN §5 answer
    from every point of the nine hours around the change (every 7.5 minutes, on and off the minute)."""
    schedule = Schedule(None, expr, BERLIN, utc(2026, 1, 1))
    for at in _around(change):
        assert schedule.next_after(at) == brute_next(expr, BERLIN, at), (expr, at.isoformat())


@pytest.mark.parametrize("expr", [*DST_EXPRS, "0 * * * *", "*/20 */1 * * *", "* 8-18 * * 1-5"])
@pytest.mark.parametrize("change", [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)], ids=["spring", "autumn"])
def test_latest_found_by_search_equals_latest_found_by_walking(expr: str, change: datetime) -> None:
    """The latest/previous occurrence at or before ``now`` found by searching back from ``now`` (a capped
    count, ``first`` a year back) are the ones an exact walk from a few hours or days before finds, for ``now`` all
    around the DST change (every 22.5 minutes)."""
    schedule = Schedule(None, expr, BERLIN, utc(2025, 1, 1))
    for now in _around(change, timedelta(minutes=22, seconds=30)):
        walked = _walk_back(schedule, now, timedelta(hours=6)) or _walk_back(schedule, now, timedelta(days=4))
        far = schedule.next_after(now - timedelta(days=400))
        assert walked is not None and far is not None
        assert not walked.capped
        latest = schedule.latest_at_or_before(now, far)
        previous = schedule.latest_at_or_before(latest - timedelta(microseconds=1), far)
        assert (latest, previous) == (walked.latest, walked.previous), (expr, now.isoformat())


def _walk_back(schedule: Schedule, now: datetime, back: timedelta) -> Occurrences | None:
    """The exact walk from the first occurrence after ``now - back``, if it finds at least two."""
    near = schedule.next_after(now - back)
    if near is None or near > now:
        return None
    walked = schedule.occurrences_until(near, now)
    return walked if walked.count >= 2 else None
