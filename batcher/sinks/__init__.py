"""The sinks: one module per store (:mod:`batcher.sinks.postgres`; the MongoDB sink comes next).

This commit only moves ``batcher/sinks.py`` to ``batcher/sinks/postgres.py`` unchanged (so git follows the
rename) and re-exports its names here; the dispatch by a stream's sink replaces this in the next commit.
"""

from batcher.sinks.postgres import *  # noqa: F403
from batcher.sinks.postgres import UPSERT_FIRST_BATCHES, _upsert_first  # noqa: F401
