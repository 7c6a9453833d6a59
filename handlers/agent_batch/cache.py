"""The in-process cache of source reads (category pages, preference members and groups).

An entry is kept for the job's ``cache_ttl_seconds`` and only while the source tables' change counters
(``agent_data_versions``, bumped by statement triggers) are what they were when it was read: any write
to ``system_users``, ``category_items`` or ``user_preferences`` invalidates what depends on it at once.
The counters are read once per run (and once per scheduler tick for the groups), never per page.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

from handlers.agent_batch.sql import Q

MAX_ENTRIES = 512


class TtlCache:
    """Values by key, each valid for a TTL and for the data versions it was read at (LRU-bounded)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[Hashable, tuple[float, Any, Any]] = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    async def get(self, key: Hashable, versions: Any, ttl: float, load: Callable[..., Awaitable[Any]],
                  *args: Any) -> Any:
        """The cached value of ``key`` when fresh and read at ``versions``; else ``load(*args)`` (kept)."""
        now = time.monotonic()
        entry = self._entries.get(key)
        if ttl > 0 and entry is not None and entry[0] > now and entry[1] == versions:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[2]
        self.misses += 1
        value = await load(*args)
        if ttl > 0:
            self._entries[key] = (now + ttl, versions, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()


CACHE = TtlCache()


async def data_versions(reader: Any) -> Mapping[str, int]:
    """The source tables' change counters (one small query)."""
    return {r["source"]: int(r["version"]) for r in await reader.fetch(Q["data_versions"])}
