"""batcher.schedule pins standard crontab semantics and the DST rules of DESIGN §3/§5.

APScheduler's own ``CronTrigger.from_crontab`` differs from cron (day of week 0 is Monday, 7 rejected,
day-of-month with day-of-week is AND); these tests fix the standard meaning, the DST behaviour at the
exact instants of Europe/Berlin's 2026 changes (spring 2026-03-29 01:00Z, autumn 2026-10-25 01:00Z),
interval schedules, and the arithmetic/capped counting of missed occurrences.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from batcher.schedule import CRON_WALK_CAP, Schedule, cron_trigger, parse_crontab, parse_timezone

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(expr: str, after: datetime, n: int, tz: str = "UTC") -> list[datetime]:
    """The next ``n`` firings after ``after``, each computed from the previous one as the materializer
    does (``next_after(last, last_fire=last)``)."""
    schedule = Schedule(None, expr, tz, after)
    out: list[datetime] = []
    cursor: datetime = after
    last: datetime | None = None
    for _ in range(n):
        nxt = schedule.next_after(cursor, last)
        assert nxt is not None
        out.append(nxt)
        cursor = last = nxt
    return out


# --------------------------------------------------------------------------- crontab fields
# 2026-03-01 is a Sunday.

@pytest.mark.parametrize("dow", ["0", "7", "sun", "SUN", "Sun"])
def test_sunday_is_0_7_and_sun(dow: str) -> None:
    """Day of week 0, 7 and the name ``sun`` (any case) all mean Sunday."""
    assert fires(f"0 12 * * {dow}", utc(2026, 2, 26), 2) == [utc(2026, 3, 1, 12), utc(2026, 3, 8, 12)]


def test_monday_is_1() -> None:
    """Day of week 1 is Monday (APScheduler's from_crontab would read it as Tuesday)."""
    assert fires("0 12 * * 1", utc(2026, 2, 26), 1) == [utc(2026, 3, 2, 12)]


@pytest.mark.parametrize("dow", ["1-5", "mon-fri", "1,2,3,4,5", "mon,tue,wed-fri"])
def test_weekday_ranges_and_names(dow: str) -> None:
    """A weekday range or list skips the weekend (Friday 2026-02-27 → Monday 2026-03-02)."""
    assert fires(f"0 12 * * {dow}", utc(2026, 2, 27, 13), 3) == [
        utc(2026, 3, 2, 12), utc(2026, 3, 3, 12), utc(2026, 3, 4, 12)]


def test_range_ending_in_7_includes_sunday() -> None:
    """``5-7`` is Friday through Sunday."""
    assert fires("0 0 * * 5-7", utc(2026, 2, 25), 4) == [
        utc(2026, 2, 27), utc(2026, 2, 28), utc(2026, 3, 1), utc(2026, 3, 6)]


def test_minute_step() -> None:
    """``*/2`` in the minute field fires on even minutes."""
    assert fires("*/2 * * * *", utc(2026, 2, 27, 13, 0, 30), 3) == [
        utc(2026, 2, 27, 13, 2), utc(2026, 2, 27, 13, 4), utc(2026, 2, 27, 13, 6)]


def test_day_of_week_step_counts_from_sunday() -> None:
    """``*/2`` in the day-of-week field is Sunday, Tuesday, Thursday, Saturday."""
    got = fires("0 0 * * */2", utc(2026, 2, 27, 13), 5)
    assert got == [utc(2026, 2, 28), utc(2026, 3, 1), utc(2026, 3, 3), utc(2026, 3, 5), utc(2026, 3, 7)]
    assert {d.strftime("%a") for d in got} == {"Sat", "Sun", "Tue", "Thu"}


def test_day_of_month_and_day_of_week_means_or() -> None:
    """Both fields restricted: the 15th of the month OR any Monday (Vixie cron), not the AND."""
    got = fires("0 0 15 * 1", utc(2026, 2, 1), 6)
    # February 2026: Mondays 2, 9, 16, 23 and the 15th (a Sunday); then Monday 2 March.
    assert got == [utc(2026, 2, 2), utc(2026, 2, 9), utc(2026, 2, 15), utc(2026, 2, 16), utc(2026, 2, 23),
                   utc(2026, 3, 2)]


def test_only_day_of_month_restricted_is_that_day() -> None:
    """With day of week ``*``, only the day of month counts."""
    assert fires("0 0 15 * *", utc(2026, 2, 1), 2) == [utc(2026, 2, 15), utc(2026, 3, 15)]


@pytest.mark.parametrize(("macro", "after", "expected"), [
    ("@hourly", utc(2026, 2, 1, 5, 30), [utc(2026, 2, 1, 6), utc(2026, 2, 1, 7)]),
    ("@daily", utc(2026, 2, 1, 5), [utc(2026, 2, 2), utc(2026, 2, 3)]),
    ("@midnight", utc(2026, 2, 1, 5), [utc(2026, 2, 2), utc(2026, 2, 3)]),
    ("@weekly", utc(2026, 2, 26), [utc(2026, 3, 1), utc(2026, 3, 8)]),
    ("@monthly", utc(2026, 2, 2), [utc(2026, 3, 1), utc(2026, 4, 1)]),
    ("@yearly", utc(2026, 2, 2), [utc(2027, 1, 1), utc(2028, 1, 1)]),
    ("@annually", utc(2026, 2, 2), [utc(2027, 1, 1), utc(2028, 1, 1)]),
])
def test_macros(macro: str, after: datetime, expected: list[datetime]) -> None:
    """The standard macros expand to their five-field meaning (weekly: Sunday midnight)."""
    assert fires(macro, after, 2) == expected


def test_next_after_is_strictly_after() -> None:
    """At exactly an occurrence, the next one is returned, not the same instant."""
    schedule = Schedule(None, "0 * * * *", "UTC", utc(2026, 1, 1))
    assert schedule.next_after(utc(2026, 1, 1, 5)) == utc(2026, 1, 1, 6)


def test_timezone_is_honoured() -> None:
    """A cron job in a timezone fires at that zone's wall time (09:00 Berlin in winter = 08:00Z)."""
    assert fires("0 9 * * *", utc(2026, 1, 10), 1, BERLIN) == [utc(2026, 1, 10, 8)]


@pytest.mark.parametrize("expr", [
    "", "* * * *", "* * * * * *", "61 * * * *", "* 24 * * *", "* * 32 * *", "* * 0 * *", "* * * 13 *",
    "* * * * 8", "* * * * xyz", "@never", "*/0 * * * *", "5-1 * * * *", "* * * * 5-1", "a b c d e",
])
def test_bad_expressions_raise_value_error(expr: str) -> None:
    """A malformed expression raises ValueError quoting it (the config loader turns that into exit 2)."""
    with pytest.raises(ValueError, match="cron expression"):
        cron_trigger(expr)


def test_bad_timezone_raises_value_error() -> None:
    """An unknown IANA zone raises ValueError naming it, for cron triggers and on its own."""
    with pytest.raises(ValueError, match="Mars/Olympus"):
        parse_timezone("Mars/Olympus")
    with pytest.raises(ValueError, match="Mars/Olympus"):
        cron_trigger("0 0 * * *", "Mars/Olympus")


def test_fixed_hours_detection() -> None:
    """Fixed hours (wall-clock rule) vs ``*``/steps (real time)."""
    assert parse_crontab("30 2 * * *").fixed_hours
    assert parse_crontab("0 1-3 * * *").fixed_hours
    assert not parse_crontab("0 * * * *").fixed_hours
    assert not parse_crontab("0 */2 * * *").fixed_hours
    assert not parse_crontab("@hourly").fixed_hours


# --------------------------------------------------------------------------- DST (Europe/Berlin)

def test_spring_missing_wall_time_runs_once_shifted_by_the_gap() -> None:
    """2026-03-29: 02:30 local does not exist; ``30 2 * * *`` runs once at 03:30 CEST = 01:30Z,
    and on the days around at 02:30 local (01:30Z in winter, 00:30Z in summer)."""
    assert fires("30 2 * * *", utc(2026, 3, 27, 12), 4, BERLIN) == [
        utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]


def test_autumn_repeated_wall_time_runs_once() -> None:
    """2026-10-25: 02:30 local happens twice (00:30Z CEST, 01:30Z CET); ``30 2 * * *`` runs at the
    first (00:30Z) and not again at 01:30Z; the next run is 02:30 CET on the 26th (01:30Z)."""
    got = fires("30 2 * * *", utc(2026, 10, 24, 12), 3, BERLIN)
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]
    schedule = Schedule(None, "30 2 * * *", BERLIN, utc(2026, 10, 1))
    first = utc(2026, 10, 25, 0, 30)
    assert schedule.next_after(first, last_fire=first) == utc(2026, 10, 26, 1, 30), \
        "the repeated 02:30 (01:30Z) must not fire a second time"


def test_dst_rule_does_not_depend_on_last_fire() -> None:
    """After a restart (no last firing known) the rule still holds: from the first 02:30 the next is the
    26th, and from inside the gap / the repeated hour the answer is the same instant."""
    schedule = Schedule(None, "30 2 * * *", BERLIN, utc(2026, 1, 1))
    assert schedule.next_after(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30)
    assert schedule.next_after(utc(2026, 10, 25, 1, 0)) == utc(2026, 10, 26, 1, 30)  # 02:00 CET
    assert schedule.next_after(utc(2026, 3, 29, 0, 59)) == utc(2026, 3, 29, 1, 30)  # 01:59 CET
    assert schedule.next_after(utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 1, 30)  # 03:00 CEST


def test_other_zone_new_york() -> None:
    """The same rules in America/New_York (2026-03-08 and 2026-11-01): ``30 2 * * *`` runs shifted in
    spring (03:30 EDT = 07:30Z); ``30 1 * * *`` runs once in autumn, at the first 01:30 (EDT, 05:30Z),
    not again at 01:30 EST (06:30Z)."""
    assert fires("30 2 * * *", utc(2026, 3, 7, 12), 2, "America/New_York") == [
        utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]
    assert fires("30 1 * * *", utc(2026, 10, 31, 12), 2, "America/New_York") == [
        utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_autumn_fixed_hour_range_runs_each_wall_time_once() -> None:
    """``30 1-3 * * *`` on 2026-10-25: 01:30 CEST, 02:30 CEST, 03:30 CET; the repeated 02:30 is skipped."""
    got = fires("30 1-3 * * *", utc(2026, 10, 24, 22), 4, BERLIN)
    assert got == [utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 2, 30),
                   utc(2026, 10, 26, 0, 30)]


def test_autumn_several_minutes_in_the_repeated_hour_run_once_each() -> None:
    """``0,30 2 * * *`` on 2026-10-25: 02:00 and 02:30 local each run once (00:00Z, 00:30Z); the
    repeated 02:00/02:30 CET (01:00Z, 01:30Z) must not run (DESIGN §5: once per wall-clock time)."""
    got = fires("0,30 2 * * *", utc(2026, 10, 24, 12), 3, BERLIN)
    assert got == [utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 0)], (
        "a fixed-hour job with several minutes in the repeated hour must fire each wall time once "
        f"(the first instant): {[t.isoformat() for t in got]}")


def test_spring_several_missing_wall_times_each_run_shifted() -> None:
    """``15,45 2 * * *`` on 2026-03-29: 02:15 and 02:45 do not exist; shifted by the gap they run at
    03:15 and 03:45 CEST (01:15Z, 01:45Z) — DESIGN §5: a missing wall time runs shifted by the gap."""
    got = fires("15,45 2 * * *", utc(2026, 3, 28, 12), 3, BERLIN)
    assert got == [utc(2026, 3, 29, 1, 15), utc(2026, 3, 29, 1, 45), utc(2026, 3, 30, 0, 15)], (
        "every wall time of the spring gap must run, shifted by the gap (02:45 → 03:45 too): "
        f"{[t.isoformat() for t in got]}")


def test_hourly_follows_real_time_in_autumn() -> None:
    """``0 * * * *`` Europe/Berlin fires every real hour across the autumn change: 00:00Z (02:00 CEST),
    01:00Z (02:00 CET, the same wall time again) and 02:00Z (03:00 CET)."""
    got = fires("0 * * * *", utc(2026, 10, 24, 22, 30), 5, BERLIN)
    assert got == [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2),
                   utc(2026, 10, 25, 3)]


def test_hourly_follows_real_time_in_spring() -> None:
    """``0 * * * *`` Europe/Berlin in spring: 00:00Z (01:00 CET), 01:00Z (03:00 CEST), 02:00Z."""
    got = fires("0 * * * *", utc(2026, 3, 28, 23, 30), 3, BERLIN)
    assert got == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)]


def test_hour_step_follows_real_time_in_autumn() -> None:
    """An hour step is not a fixed hour: ``0 */1 * * *`` fires at both 02:00 local instants."""
    got = fires("0 */1 * * *", utc(2026, 10, 24, 23, 30), 3, BERLIN)
    assert got == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)]


# --------------------------------------------------------------------------- intervals

def test_interval_is_absolute_from_the_anchor() -> None:
    """An interval schedule fires every N real minutes from its anchor, whatever ``after`` is."""
    anchor = utc(2026, 1, 1, 0, 3)
    schedule = Schedule(7, None, "UTC", anchor)
    assert schedule.next_after(anchor) == utc(2026, 1, 1, 0, 10)
    assert schedule.next_after(utc(2026, 1, 1, 5, 0)) == utc(2026, 1, 1, 5, 4)  # 0:03 + 43×7 min


def test_interval_ignores_dst_and_timezone() -> None:
    """An hourly interval in Europe/Berlin keeps 60 real minutes across the autumn change."""
    anchor = utc(2026, 10, 24, 22, 15)
    schedule = Schedule(60, None, BERLIN, anchor)
    cursor, got = anchor, []
    for _ in range(4):
        nxt = schedule.next_after(cursor, cursor)
        assert nxt is not None
        got.append(nxt)
        cursor = nxt
    assert [b - a for a, b in zip([anchor, *got], got, strict=False)] == [timedelta(hours=1)] * 4


# --------------------------------------------------------------------------- missed occurrences

def test_interval_occurrences_are_counted_arithmetically() -> None:
    """A 1-minute job 10 days behind has 14,401 occurrences (both ends included), counted instantly."""
    first = utc(2026, 1, 1)
    now = first + timedelta(days=10)
    started = time.perf_counter()
    occ = Schedule(1, None, "UTC", first).occurrences_until(first, now)
    assert time.perf_counter() - started < 0.05
    assert (occ.count, occ.latest, occ.previous, occ.capped) == (
        14_401, now, now - timedelta(minutes=1), False)


def test_interval_occurrences_between_ticks() -> None:
    """``now`` between occurrences: the latest is the last one at or before ``now``."""
    first = utc(2026, 1, 1)
    occ = Schedule(5, None, "UTC", first).occurrences_until(first, first + timedelta(minutes=12))
    assert (occ.count, occ.latest, occ.previous, occ.capped) == (
        3, first + timedelta(minutes=10), first + timedelta(minutes=5), False)


def test_single_occurrence_has_no_previous() -> None:
    """Only ``first`` itself is due: count 1, no previous."""
    first = utc(2026, 1, 1)
    occ = Schedule(5, None, "UTC", first).occurrences_until(first, first + timedelta(minutes=1))
    assert (occ.count, occ.latest, occ.previous, occ.capped) == (1, first, None, False)
    occ = Schedule(None, "0 * * * *", "UTC", first).occurrences_until(first, first + timedelta(minutes=59))
    assert (occ.count, occ.latest, occ.previous, occ.capped) == (1, first, None, False)


def test_cron_occurrences_are_walked() -> None:
    """A cron job 5.5 minutes behind has 6 occurrences (every minute, both ends)."""
    first = utc(2026, 1, 1)
    occ = Schedule(None, "* * * * *", "UTC", first).occurrences_until(first, first + timedelta(minutes=5.5))
    assert (occ.count, occ.latest, occ.previous, occ.capped) == (
        6, first + timedelta(minutes=5), first + timedelta(minutes=4), False)


def test_cron_walk_is_capped() -> None:
    """A per-minute cron job 10 days behind stops counting at 10,000 and says so (``capped``)."""
    first = utc(2026, 1, 1)
    now = first + timedelta(days=10)
    occ = Schedule(None, "* * * * *", "UTC", first).occurrences_until(first, now)
    assert CRON_WALK_CAP == 10_000
    assert occ.count == CRON_WALK_CAP and occ.capped


def test_capped_cron_walk_still_reports_the_real_latest_occurrence() -> None:
    """DESIGN §5: missed occurrences collapse into one run of the *latest*; when the count is capped the
    run must still be for the latest occurrence at or before ``now``, not the 10,000th after ``first``."""
    first = utc(2026, 1, 1)
    now = first + timedelta(days=10)
    occ = Schedule(None, "* * * * *", "UTC", first).occurrences_until(first, now)
    assert occ.latest == now, (
        f"a capped cron walk must still report the latest occurrence ({now.isoformat()}), not the "
        f"10,000th ({occ.latest.isoformat()}): materialize.py queues the run for `latest` and measures "
        "misfire_grace from it")
    assert occ.previous == now - timedelta(minutes=1)
