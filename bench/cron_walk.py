"""Cron walks (issue 14, defect 8): what counting missed occurrences costs, before and after the fix.

A job far behind its schedule is materialized with ``Schedule.occurrences_until(next_run_at, now)``
(count capped at 10,000, latest and previous occurrence) and ``next_after(now)``. Before the fix a
fixed-hour cron in a DST zone enumerated ~6 hours of wall times per occurrence: ``* 0-23 * * *``
Europe/Berlin cost ~11 s per missed day, run on the event loop inside the materialize transaction.

For each expression this prints the CPU seconds of the old algorithm (a faithful copy below, as it was
on main before the fix) for ``--old-days`` missed days, the new one for the same span and for a year,
and old/new. No database, no network.

    .venv/bin/python bench/cron_walk.py [--old-days 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import emit_result

from batcher.schedule import CRON_WALK_CAP, Occurrences, Schedule, _wall, parse_timezone

_ONE_US = timedelta(microseconds=1)
_DST_MARGIN = timedelta(hours=3)
CASES = [("* * * * *", "UTC"), ("* 0-23 * * *", "Europe/Berlin"), ("* 8-18 * * *", "Europe/Berlin"),
         ("* 8-18 * * 1-5", "Europe/Berlin"), ("*/5 * * * *", "America/New_York")]
NOW = datetime(2026, 6, 3, 12, 0, 30, tzinfo=UTC)  # a Wednesday


class OldSchedule(Schedule):
    """The algorithm before the fix: every wall-clock ``next_after`` enumerates from 3 h before ``after``
    to 3 h past the best; a capped walk then walks windows back from ``now``."""

    def _next_wall_clock(self, after: datetime) -> datetime | None:
        tz = parse_timezone(self.timezone)
        walls = self._wall_trigger
        wall = _wall(after, tz).replace(tzinfo=UTC) - _DST_MARGIN
        best: datetime | None = None
        for _ in range(CRON_WALK_CAP):
            nxt = walls.get_next_fire_time(None, wall + _ONE_US)
            if nxt is None:
                break
            wall = cast(datetime, nxt)
            if best is not None and wall > _wall(best, tz).replace(tzinfo=UTC) + _DST_MARGIN:
                break
            instant = wall.replace(tzinfo=None).replace(tzinfo=tz, fold=0).astimezone(UTC)
            if instant > after and (best is None or instant < best):
                best = instant
        return best

    def occurrences_until(self, first: datetime, now: datetime) -> Occurrences:
        count, latest, prev = 1, first, None
        while count < CRON_WALK_CAP:
            nxt = self.next_after(latest)
            if nxt is None or nxt > now:
                return Occurrences(count, latest, prev, False)
            prev, latest, count = latest, nxt, count + 1
        for days in (1, 8, 32, 367, 3700):
            start = max(now - timedelta(days=days), first)
            found, before, at = None, None, start
            for _ in range(CRON_WALK_CAP):
                nxt = self.next_after(at)
                if nxt is None or nxt > now:
                    break
                before, found, at = found, nxt, nxt
            if found is not None:
                return Occurrences(count, found, before, True)
        return Occurrences(count, first, None, True)


def materialize_cpu(kind: Callable[..., Any], expr: str, tz: str, days: float) -> tuple[float, Occurrences]:
    """CPU seconds of what materialize computes for a job ``days`` behind."""
    schedule = kind(None, expr, tz, NOW - timedelta(days=400))
    first = schedule.next_after(NOW - timedelta(days=days))
    started = time.process_time()
    occ = schedule.occurrences_until(first, NOW)
    schedule.next_after(max(NOW, occ.latest))
    return time.process_time() - started, occ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-days", type=float, default=1.0, help="missed days timed with the old walk")
    args = parser.parse_args()
    print(f"missed occurrences of a job behind until {NOW.isoformat()} (CPU seconds; cap {CRON_WALK_CAP})")
    print(f"{'expression':<17} {'zone':<17} {'old ' + str(args.old_days) + ' d':>9} {'new same':>9} "
          f"{'old/new':>8} {'new 365 d':>10}  count")
    for expr, tz in CASES:
        old, old_occ = materialize_cpu(OldSchedule, expr, tz, args.old_days)
        new, new_occ = materialize_cpu(Schedule, expr, tz, args.old_days)
        assert (old_occ.latest, old_occ.previous) == (new_occ.latest, new_occ.previous), (expr, tz)
        year, occ = materialize_cpu(Schedule, expr, tz, 365)
        count = f"≥ {occ.count}" if occ.capped else str(occ.count)
        print(f"{expr:<17} {tz:<17} {old:>9.3f} {new:>9.3f} {old / max(new, 1e-6):>7.0f}x {year:>10.3f}  {count}")
        emit_result(f"cron walk: CPU to count `{expr}` {tz} missed over {args.old_days:g} d", new, "s CPU",
                    baseline=old, baseline_label="old walk", goal="bounded, ≪ 1 s (a year behind too)",
                    met=new < 1.0 and year < 1.0, note=f"a year behind: {year:.3f} s, count {count}")


if __name__ == "__main__":
    main()
