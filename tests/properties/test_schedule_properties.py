"""Property tests of schedules: any cron text or timezone name is accepted or a ValueError naming it,
and an accepted standard crontab fires exactly when a reference implementation of Vixie cron says.

The reference (below) reads the five fields the way crontab(5) does — ``*``, ``a``, ``a-b``, ``*/n``,
``a-b/n``, ``a/n`` (to the field's end), lists, month and day names, day of week 0 and 7 both Sunday — and
joins day of month and day of week with OR when both are restricted (neither starts with ``*``), AND
otherwise. It walks days, so it is exact and fast; timezone UTC keeps DST out (tested separately).
"""

from __future__ import annotations

import datetime as dt
import re

from hypothesis import example, given
from hypothesis import strategies as st

from batcher.schedule import Schedule, check_cron, cron_trigger, parse_timezone
from tests.properties.strategies import FAST, NASTY_TEXT, text

UTC = dt.UTC
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
#: (low, high, names) per field: minute, hour, day of month, month, day of week.
FIELDS = [(0, 59, None), (0, 23, None), (1, 31, None), (1, 12, _MONTHS), (0, 7, _DAYS)]


def _value(token: str, names: list[str] | None, low: int) -> int:
    if names and token.lower() in names:
        return names.index(token.lower()) + low
    return int(token)


def reference_set(field: str, index: int) -> set[int]:
    """The values a crontab field selects, read as crontab(5) does."""
    low, high, names = FIELDS[index]
    out: set[int] = set()
    for part in field.split(","):
        rng, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if rng == "*":
            lo, hi = low, high
        elif "-" in rng:
            a, b = rng.split("-")
            lo, hi = _value(a, names, low), _value(b, names, low)
        else:
            lo = _value(rng, names, low)
            hi = high if step_s else lo
        out.update(range(lo, hi + 1, step))
    return {v % 7 for v in out} if index == 4 else out


def reference_next(expr: str, after: dt.datetime) -> dt.datetime | None:
    """The first minute strictly after ``after`` (UTC) that the crontab selects, within 30 years."""
    fields = expr.split()
    minutes, hours, days, months, dows = (reference_set(f, i) for i, f in enumerate(fields))
    either = not fields[2].startswith("*") and not fields[4].startswith("*")
    day = after.date()
    for _ in range(366 * 30):
        dom_ok, dow_ok = day.day in days, (day.isoweekday() % 7) in dows
        if day.month in months and ((dom_ok or dow_ok) if either else (dom_ok and dow_ok)):
            for hour in sorted(hours):
                for minute in sorted(minutes):
                    candidate = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
                    if candidate > after:
                        return candidate
        day += dt.timedelta(days=1)
    return None


def _atom(index: int) -> st.SearchStrategy[str]:
    low, high, names = FIELDS[index]
    number = st.integers(low, high)
    value = number.map(str) if not names else st.one_of(
        number.map(str), st.sampled_from(names).map(lambda n: n.upper() if len(n) % 2 else n))
    ranges = st.tuples(number, number).map(sorted).map(lambda p: f"{p[0]}-{p[1]}")
    step = st.integers(1, high - low + 1).map(str)
    return st.one_of(value, ranges, st.tuples(st.one_of(ranges, number.map(str)), step).map("/".join))


def _field(index: int) -> st.SearchStrategy[str]:
    star = st.sampled_from(["*"]) | st.integers(1, 20).map(lambda n: f"*/{n}")
    return st.one_of(star, st.lists(_atom(index), min_size=1, max_size=3).map(",".join))


crontabs = st.tuples(*(_field(i) for i in range(5))).map(" ".join).filter(
    lambda e: all(int(n) <= 31 for n in re.findall(r"\d+", e.split()[2])))
instants = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2090, 1, 1)).map(lambda d: d.replace(tzinfo=UTC))


@FAST
@given(expr=crontabs, after=instants)
@example(expr="0 0 * * 7", after=dt.datetime(2026, 1, 1, tzinfo=UTC))  # 7 is Sunday
@example(expr="0 12 13 * 5", after=dt.datetime(2026, 1, 1, tzinfo=UTC))  # the 13th OR a Friday
@example(expr="0 0 */2 * 1", after=dt.datetime(2026, 1, 1, tzinfo=UTC))  # a '*' field: AND
@example(expr="5/20 * * * sun-sat/2", after=dt.datetime(2026, 1, 1, tzinfo=UTC))
@example(expr="0 0 29 feb *", after=dt.datetime(2026, 3, 1, tzinfo=UTC))
@example(expr="*/60 */24 */40 */12 *", after=dt.datetime(2026, 1, 2, tzinfo=UTC))  # found: step > range refused
@example(expr="* * * * 7-7", after=dt.datetime(2000, 1, 1, tzinfo=UTC))  # found: 7-7 ran every day
@example(expr="* * * * 7/1", after=dt.datetime(2000, 1, 1, tzinfo=UTC))  # found: 7/1 ran every day
@example(expr="* * */5 * 3/1", after=dt.datetime(2002, 1, 1, tzinfo=UTC))  # found: 3/1 missed Sunday (7)
def test_a_valid_crontab_fires_when_standard_cron_would(expr: str, after: dt.datetime) -> None:
    """Standard crontab translated for APScheduler: the next occurrence (UTC) equals the reference's."""
    expected = reference_next(expr, after)
    try:
        check_cron(expr)
    except ValueError as exc:  # only a date that never exists (0 0 30 2 *) may be refused
        assert expected is None and "never fires" in str(exc), (expr, exc)
        return
    assert Schedule(None, expr, "UTC", after).next_after(after) == expected


cron_texts = st.one_of(
    text, st.sampled_from(["@hourly", "@reboot", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *",
                           "* * * 13 *", "* * * * 8", "*/0 * * * *", "5-1 * * * *", "a-b * * * *",
                           "* * * * mon-sun", "1,,2 * * * *", "-1 * * * *", "* * * * 7-0", "1/ * * * *",
                           "9" * 30 + " * * * *", "* * * * */99999999999999999999"]),
    st.lists(st.one_of(st.sampled_from(["*", "*/", "-", ",", "/", "7", "L", "?", "#", "W", "0"]), text),
             min_size=5, max_size=5).map(" ".join))


@FAST
@given(expr=cron_texts, timezone=st.one_of(st.sampled_from(["UTC", "Europe/Berlin", "America/St_Johns"]),
                                           st.sampled_from(NASTY_TEXT), text))
@example(expr="* * * * 7-0", timezone="UTC")
@example(expr="* * * * */99999999999999999999", timezone="UTC")
@example(expr="0 0 * * 1", timezone="\x00")
@example(expr="0 0 * * 1", timezone="/etc/passwd")
def test_any_cron_text_and_timezone_is_accepted_or_a_value_error(expr: str, timezone: str) -> None:
    """check_cron on any text: accepted (then the trigger builds and has a next occurrence), or a
    ValueError whose message names the expression or the zone."""
    try:
        check_cron(expr, timezone)
    except ValueError as exc:
        message = str(exc)
        assert repr(expr) in message or repr(timezone) in message, message
        return
    cron_trigger(expr, timezone)
    now = dt.datetime.now(UTC)
    assert Schedule(None, expr, timezone, now).next_after(now) is not None


@FAST
@given(name=st.one_of(st.sampled_from(NASTY_TEXT), text))
@example(name="../UTC")
@example(name="UTC\x00")
def test_any_timezone_name_is_a_zone_or_a_value_error(name: str) -> None:
    """parse_timezone: a ZoneInfo, or ValueError naming the zone."""
    try:
        parse_timezone(name)
    except ValueError as exc:
        assert repr(name) in str(exc)


@FAST
@given(minutes=st.integers(1, 1440), anchor=instants, after=instants)
def test_interval_occurrences_are_anchor_plus_whole_intervals(minutes: int, anchor: dt.datetime,
                                                              after: dt.datetime) -> None:
    """An interval schedule's next occurrence is the first ``anchor + k·interval`` strictly after ``after``."""
    schedule = Schedule(minutes, None, "UTC", anchor)
    nxt = schedule.next_after(after)
    assert nxt is not None and nxt > after and nxt >= anchor
    step = dt.timedelta(minutes=minutes)
    assert (nxt - anchor) % step == dt.timedelta(0)
    assert nxt - step <= after or nxt - step < anchor
