"""The process's garbage-collector policy: start-up objects are frozen out of the cyclic collector.

A run keeps tens of thousands of freshly parsed records alive (pages fetched ahead, batches prefetched),
so the collector's young generations fill up and full collections follow one another. Each full
collection walked every object the process ever imported too (modules, classes, pydantic schemas:
~60,000 of them), which made parsing a DataSync page of 500 events about 2.5× slower while a few pages are
kept alive (``orjson.loads`` 2.7 ms instead of 1.0 ms per page); a ``run-job`` of 20,000 events spent
0.069 s instead of 0.021 s in the collector. :func:`freeze_startup_objects`, called once
the services are open, collects what start-up left behind and moves every surviving object to the
permanent generation (``gc.freeze``), which collections skip. Nothing changes for reference counting:
a frozen object that loses its last reference is freed as before; only a frozen object that later
becomes part of an unreachable cycle is never reclaimed, which start-up objects (kept for the process's
life) do not do.

The youngest generation is also collected less often (every :data:`YOUNG_THRESHOLD` net allocations of
container objects instead of 700): parsed pages allocate tens of thousands of dicts and lists, almost all
freed by reference counting, so most young collections found nothing to free — a 20,000-event DataSync run
spent ~7 ms in 78 of them, ~1 ms at most with the higher threshold (issue 20). Cycles are still collected,
a little later; the older generations' thresholds are unchanged.
"""

from __future__ import annotations

import gc

_frozen = False
YOUNG_THRESHOLD = 10_000


def freeze_startup_objects() -> bool:
    """Collect, then freeze every live object and raise the young generation's threshold, once per
    process; True when this call froze them."""
    global _frozen
    if _frozen:
        return False
    _frozen = True
    gc.collect()
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, young), older, oldest)
    return True
