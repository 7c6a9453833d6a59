"""Schedules: standard crontab and fixed intervals, turned into APScheduler 3.11 triggers.

Owns APScheduler's trigger side (the loop itself lives in :mod:`batcher.scheduler`). APScheduler's
``CronTrigger.from_crontab`` is not standard cron, so five-field crontab syntax is translated here:

- day of week: ``0`` and ``7`` are Sunday, ``1`` Monday … (APScheduler: 0 is Monday, 7 rejected); names
  ``sun``…``sat``; ranges and steps are expanded to an explicit list of days.
- day of month *and* day of week both restricted (neither starts with ``*``) means OR, as in Vixie cron:
  an ``OrTrigger`` of the two.
- a step wider than its field's range (``*/60`` minutes, ``*/24`` hours) selects the range's first value,
  as in Vixie cron (APScheduler refuses it).
- macros ``@yearly @annually @monthly @weekly @daily @midnight @hourly``.

DST rule (DESIGN §5): a cron job whose hour field is fixed (not ``*``, no step) runs once per wall-clock
time — in autumn the repeated 02:30 fires only the first time; a wall time that does not exist in spring
runs shifted by the gap (02:30 → 03:30). Jobs with hour ``*`` or a step follow real time. Interval jobs
are absolute (every N minutes of real time from the job's anchor).

``every_weeks`` N > 1 (cron only; biweekly = 2): only the occurrences in every N-th week fire, weeks
counted Monday to Sunday in the job's timezone from the week holding the anchor. The cron rules above
(DST included) decide the instants; this only drops whole weeks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_APS_DOW = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]  # APScheduler accepts these names
_ONE_US = timedelta(microseconds=1)
CRON_WALK_CAP = 10_000
_DST_MARGIN = timedelta(hours=3)  # more than any DST shift
_SEARCH_DAYS = (1, 8, 32, 367, 3700)


def parse_timezone(name: str) -> ZoneInfo:
    """A ZoneInfo, or ValueError naming the unknown zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}") from None


def _dow_value(token: str) -> int:
    t = token.strip().lower()
    if t in _DOW_NAMES:
        return _DOW_NAMES.index(t)
    if t.isdigit() and 0 <= int(t) <= 7:
        return int(t) % 7
    raise ValueError(f"bad day of week {token!r} (0-7 or sun-sat)")


def _dow_bound(token: str) -> int:
    """A range bound: 0-6 as :func:`_dow_value`, but 7 stays 7 (the field's end), so ``7-7`` and ``7/1``
    are Sunday only and ``5-7`` is Friday to Sunday."""
    return 7 if token.strip() == "7" else _dow_value(token)


def _expand_dow(field: str) -> list[int]:
    days: set[int] = set()
    for part in field.split(","):
        rng, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if step < 1:
            raise ValueError(f"bad step in day of week {part!r}")
        if rng == "*":
            lo, hi = 0, 6
        elif "-" in rng:
            a, b = rng.split("-", 1)
            lo, hi = _dow_bound(a), _dow_bound(b)
            if hi < lo:
                raise ValueError(f"bad day-of-week range {part!r}")
        else:
            lo = hi = _dow_bound(rng)
            if step_s:
                hi = 7  # "a/n" runs to the field's end, 7 (Sunday again) as in Vixie cron: 1/3 is Mon, Thu, Sun
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return sorted(days)


@dataclass(frozen=True)
class CronSpec:
    minute: str
    hour: str
    day: str
    month: str
    day_of_week: str

    @property
    def fixed_hours(self) -> bool:
        return not self.hour.startswith("*") and "/" not in self.hour


def parse_crontab(expr: str) -> CronSpec:
    """Split a standard five-field crontab (or a macro) into its fields; ValueError when malformed."""
    text = _MACROS.get(expr.strip().lower(), expr.strip())
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expr!r} must have 5 fields (minute hour day month weekday)")
    return CronSpec(*fields)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _clamp_step(part: str, low: int, high: int) -> str:
    """A step wider than its range selects only the range's start (``*/60`` minutes: minute 0), as in
    Vixie cron; APScheduler refuses such a step, so the part becomes that one value."""
    rng, sep, step = part.partition("/")
    if not sep or not _digits(step):
        return part
    first, dash, last = rng.partition("-")
    if rng == "*":
        lo, hi = low, high
    elif _digits(first) and (not dash or _digits(last)):
        lo, hi = int(first), int(last) if dash else high
    else:
        return part
    return str(lo) if lo <= hi < lo + int(step) else part


def _clamped(field: str, low: int, high: int) -> str:
    return ",".join(_clamp_step(part, low, high) for part in field.split(","))


def _cron_trigger(spec: CronSpec, tz: ZoneInfo, day: str, dow: str) -> CronTrigger:
    aps_dow = "*" if dow.startswith("*") and dow in ("*", "*/1") else ",".join(
        _APS_DOW[d] for d in _expand_dow(dow))
    return CronTrigger(minute=_clamped(spec.minute, 0, 59), hour=_clamped(spec.hour, 0, 23),
                       day=_clamped(day, 1, 31), month=_clamped(spec.month, 1, 12),
                       day_of_week=aps_dow, timezone=tz)


def cron_trigger(expr: str, timezone: str = "UTC") -> Any:
    """An APScheduler trigger with standard crontab semantics; ValueError with the reason otherwise."""
    spec = parse_crontab(expr)
    tz = parse_timezone(timezone)
    try:
        if not spec.day.startswith("*") and not spec.day_of_week.startswith("*"):
            return OrTrigger([_cron_trigger(spec, tz, spec.day, "*"),
                              _cron_trigger(spec, tz, "*", spec.day_of_week)])
        return _cron_trigger(spec, tz, spec.day, spec.day_of_week)
    except ValueError as exc:
        raise ValueError(f"bad cron expression {expr!r}: {exc}") from None


def check_cron(expr: str, timezone: str = "UTC") -> None:
    """ValueError with the reason when ``expr`` is malformed or can never fire (``0 0 30 2 *``): the check
    the API applies to an edit (no next occurrence), shared by the file's validation."""
    cron_trigger(expr, timezone)
    now = datetime.now(UTC)
    if Schedule(None, expr, timezone, now).next_after(now) is None:
        raise ValueError(f"the cron expression {expr!r} never fires (no such date)")


@dataclass(frozen=True)
class Schedule:
    """A job's schedule: exactly one of interval or cron, anchored and timezone-aware."""

    interval_minutes: int | None
    cron: str | None
    timezone: str
    anchor: datetime
    every_weeks: int = 1

    @functools.cached_property
    def _wall_trigger(self) -> Any:
        assert self.cron is not None
        return cron_trigger(self.cron, "UTC")

    @functools.cached_property
    def _trigger(self) -> Any:
        return self.trigger()

    def trigger(self) -> Any:
        if self.interval_minutes is not None:
            return IntervalTrigger(minutes=self.interval_minutes, start_date=self.anchor, timezone=UTC)
        assert self.cron is not None
        return cron_trigger(self.cron, self.timezone)

    @functools.cached_property
    def wall_clock(self) -> bool:
        return self.cron is not None and parse_crontab(self.cron).fixed_hours

    def next_after(self, after: datetime, last_fire: datetime | None = None) -> datetime | None:
        """The first occurrence strictly after ``after`` (UTC).

        ``last_fire`` is accepted for callers that know it; the DST rule does not need it: a fixed-hour cron
        job maps each wall time to exactly one instant (see :meth:`_next_wall_clock`).
        """
        if self.every_weeks <= 1 or self.cron is None:
            return self._next_any_week(after)
        cursor: datetime | None = after
        for _ in range(CRON_WALK_CAP):
            cursor = self._next_any_week(cursor) if cursor is not None else None
            if cursor is None or self._week_index(cursor) % self.every_weeks == 0:
                return cursor
        return None

    def _week_index(self, moment: datetime) -> int:
        """Weeks (Monday-based, local) from the anchor's week to ``moment``'s."""
        def monday(at: datetime) -> date:
            day = at.astimezone(self._tz).date()
            return day - timedelta(days=day.weekday())
        return (monday(moment) - monday(self.anchor)).days // 7

    def _next_any_week(self, after: datetime) -> datetime | None:
        if self.wall_clock:
            return self._next_wall_clock(after)
        trigger = self._trigger
        cursor = after
        for _ in range(48):
            candidate = trigger.get_next_fire_time(None, cursor + _ONE_US)
            if candidate is None:
                return None
            candidate = cast(datetime, candidate).astimezone(UTC)
            if candidate > after:
                return candidate
            cursor = cursor + timedelta(hours=1)  # APScheduler 3.11 can return a past fold time
        return None

    def _next_wall_clock(self, after: datetime) -> datetime | None:
        """Fixed-hour cron jobs run once per wall-clock time: each wall time W maps to one instant — the
        first when W repeats (autumn), W shifted by the gap when W does not exist (spring).

        Wall times are enumerated from ``after``'s (from ``after``'s minus the gap when a spring change
        happened less than a gap ago, as a skipped 02:45 then runs after ``after``) and the earliest
        instant after ``after`` wins. The enumeration stops at the first wall time that exists and maps
        after ``after`` (later ones map later), or a few hours past the best (shifted gap times are not
        in wall-time order): one step away from a DST change, about a gap's worth of steps near one.
        """
        tz = self._tz
        walls = self._wall_trigger  # wall times, computed as if they were UTC
        wall = _wall(after, tz).replace(tzinfo=UTC) - _recent_gap(after, tz)
        best: datetime | None = None
        for _ in range(CRON_WALK_CAP):
            nxt = walls.get_next_fire_time(None, wall + _ONE_US)
            if nxt is None:
                break
            wall = cast(datetime, nxt)
            if best is not None and wall > _wall(best, tz).replace(tzinfo=UTC) + _DST_MARGIN:
                break
            instant = wall.replace(tzinfo=None).replace(tzinfo=tz, fold=0).astimezone(UTC)
            if instant <= after:
                continue
            if best is None or instant < best:
                best = instant
            if _wall(instant, tz) == wall.replace(tzinfo=None):
                break  # an existing wall time: every later one maps later
        return best

    @functools.cached_property
    def _tz(self) -> ZoneInfo:
        return parse_timezone(self.timezone)

    def occurrences_until(self, first: datetime, now: datetime) -> Occurrences:
        """The occurrences in [first, now]; ``first`` is itself an occurrence and ``first <= now``.

        Interval schedules are counted arithmetically; cron schedules are walked with a cap of
        CRON_WALK_CAP steps (``capped`` True means "at least" the count; the latest occurrence and the one
        before it are then found by a bisection back from ``now``). Bounded for any expression and zone:
        at most CRON_WALK_CAP + a few hundred ``next_after`` calls.
        """
        if self.interval_minutes is not None:
            step = timedelta(minutes=self.interval_minutes)
            n = int((now - first) // step)
            latest = first + n * step
            return Occurrences(n + 1, latest, latest - step if n else None, False)
        count, latest, prev = 1, first, None
        while count < CRON_WALK_CAP:
            nxt = self.next_after(latest)
            if nxt is None or nxt > now:
                return Occurrences(count, latest, prev, False)
            prev, latest, count = latest, nxt, count + 1
        latest = self.latest_at_or_before(now, first)
        prev = self.latest_at_or_before(latest - _ONE_US, first) if latest > first else None
        return Occurrences(count, latest, prev, True)

    def latest_at_or_before(self, now: datetime, floor: datetime) -> datetime:
        """The last occurrence <= ``now``, given ``floor`` <= ``now`` is an occurrence.

        ``next_after`` is monotonic, so the answer is ``next_after(t)`` for the largest ``t`` whose
        ``next_after`` is still <= ``now``: a window of growing width back from ``now`` brackets ``t``
        (never below ``floor``), then bisection narrows it to a microsecond (~40 steps a day of window).
        """
        lo = floor - _ONE_US
        for days in _SEARCH_DAYS:
            start = now - timedelta(days=days)
            if start <= lo:
                break
            if self._at_or_before(start, now):
                lo = start
                break
        hi = now
        while hi - lo > _ONE_US:
            mid = lo + (hi - lo) / 2
            if self._at_or_before(mid, now):
                lo = mid
            else:
                hi = mid
        latest = self.next_after(lo)
        return latest if latest is not None and latest <= now else floor  # floor: not an occurrence

    def _at_or_before(self, at: datetime, now: datetime) -> bool:
        nxt = self.next_after(at)
        return nxt is not None and nxt <= now


@dataclass(frozen=True)
class Occurrences:
    """How many occurrences fell in a window, the latest, the one before it, and whether counting capped."""

    count: int
    latest: datetime
    previous: datetime | None
    capped: bool


def _wall(moment: datetime, tz: ZoneInfo) -> datetime:
    return moment.astimezone(tz).replace(tzinfo=None)


def _recent_gap(moment: datetime, tz: ZoneInfo) -> timedelta:
    """How far the clocks went forward, when that happened less than that long before ``moment`` (wall
    times skipped by the change then run shifted after ``moment``); otherwise zero."""
    now_off = _offset(moment, tz)
    gap = now_off - _offset(moment - _DST_MARGIN, tz)
    if gap <= timedelta(0) or _offset(moment - gap, tz) == now_off:
        return timedelta(0)
    return gap


def _offset(moment: datetime, tz: ZoneInfo) -> timedelta:
    return moment.astimezone(tz).utcoffset() or timedelta(0)
