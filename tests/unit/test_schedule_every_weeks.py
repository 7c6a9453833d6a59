"""Biweekly (``every_weeks`` = 2 from an anchor) and monthly preference schedules across DST changes:
the exact next fire instants, in UTC, of the crons the agent handler derives for its groups."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from batcher.schedule import Schedule
from handlers.agent_batch.schedules import group_cron

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


def schedule(frequency: str, time: str, tz: ZoneInfo, anchor: datetime, **days: int) -> Schedule:
    cron, weeks = group_cron(frequency, time, **days)
    return Schedule(None, cron, tz.key, anchor, weeks)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_biweekly_skips_every_other_week_across_the_spring_change() -> None:
    """Mondays 09:00 Berlin, anchored in the week of 2026-03-16: the 16th (CET, 08:00 UTC), not the 23rd,
    then the 30th after the spring change (CEST, 07:00 UTC), then 13 April."""
    s = schedule("biweekly", "09:00", BERLIN, datetime(2026, 3, 16, tzinfo=BERLIN), weekly_day=1)
    assert s.next_after(utc(2026, 3, 15)) == utc(2026, 3, 16, 8)
    assert s.next_after(utc(2026, 3, 16, 8)) == utc(2026, 3, 30, 7)
    assert s.next_after(utc(2026, 3, 30, 7)) == utc(2026, 4, 13, 7)


def test_biweekly_across_the_autumn_change() -> None:
    """After 12 October (CEST, 07:00 UTC) the next is 26 October, the day after the autumn change (CET,
    08:00 UTC) — 19 October is an off week."""
    s = schedule("biweekly", "09:00", BERLIN, datetime(2026, 3, 16, tzinfo=BERLIN), weekly_day=1)
    assert s.next_after(utc(2026, 10, 12, 6)) == utc(2026, 10, 12, 7)
    assert s.next_after(utc(2026, 10, 12, 7)) == utc(2026, 10, 26, 8)


def test_biweekly_wall_time_in_the_spring_gap_runs_shifted() -> None:
    """Sundays 02:30 Berlin in the anchor's week: on 29 March 2026 02:30 does not exist and runs at 03:30
    CEST (01:30 UTC); two weeks later at 02:30 CEST (00:30 UTC)."""
    s = schedule("biweekly", "02:30", BERLIN, datetime(2026, 3, 23, tzinfo=BERLIN), weekly_day=0)
    assert s.next_after(utc(2026, 3, 28)) == utc(2026, 3, 29, 1, 30)
    assert s.next_after(utc(2026, 3, 29, 1, 30)) == utc(2026, 4, 12, 0, 30)


def test_monthly_across_the_autumn_change() -> None:
    """The 1st at 09:00 New York: 1 October (EDT, 13:00 UTC), then 1 November — the day of the change —
    at 09:00 EST (14:00 UTC)."""
    s = schedule("monthly", "09:00", NEW_YORK, datetime(2026, 1, 1, tzinfo=NEW_YORK), monthly_day=1)
    assert s.next_after(utc(2026, 9, 30)) == utc(2026, 10, 1, 13)
    assert s.next_after(utc(2026, 10, 1, 13)) == utc(2026, 11, 1, 14)


def test_monthly_repeated_wall_time_fires_once() -> None:
    """The 1st at 01:30 New York: on 1 November 2026 01:30 happens twice; it fires at the first (EDT,
    05:30 UTC) only, then on 1 December (EST, 06:30 UTC)."""
    s = schedule("monthly", "01:30", NEW_YORK, datetime(2026, 1, 1, tzinfo=NEW_YORK), monthly_day=1)
    assert s.next_after(utc(2026, 10, 31)) == utc(2026, 11, 1, 5, 30)
    assert s.next_after(utc(2026, 11, 1, 5, 30)) == utc(2026, 12, 1, 6, 30)


def test_weekly_and_hourly_group_crons() -> None:
    """The other frequencies' crons: weekly on the configured day, daily, hourly at the minute."""
    assert group_cron("weekly", "07:05", weekly_day=3) == ("5 7 * * 3", 1)
    assert group_cron("daily", "23:59") == ("59 23 * * *", 1)
    assert group_cron("hourly", "10:15") == ("15 * * * *", 1)
