"""The ``usage_aggregation`` handler: Redis usage counters → ``merchant_usage``, exact and idempotent.

The key format, its validation and the SCAN/MGET reader live in :mod:`handlers.usage_keys`; the
``batcher aggregate`` and ``aggregate-status`` commands in :mod:`handlers.usage_cli` (contributed through
``cli_commands``). Records are ``(merchant_id, usage_date, metric_type, value)``; the stream's
``update_if_changed`` policy makes a rerun with unchanged counters write nothing, ``aggregated_at`` included.
The original tool's environment names ``ENABLE_USAGE_AGGREGATION`` and ``USAGE_AGGREGATION_INTERVAL`` set
``enabled``/``interval_minutes`` of every job of this type (:meth:`UsageAggregationHandler.job_env_overrides`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import Any

from batcher import Batch, ConfigError, Handler, RunContext, Stream
from handlers.usage_cli import USAGE_COMMANDS, USAGE_TYPE
from handlers.usage_keys import (
    CHECKPOINT_VERSION,
    MAX_SCANS_PER_PAGE,
    STREAM,
    MalformedKey,
    Page,
    UsageKey,
    UsageParams,
    UsageReader,
    glob_escape,
    key_date,
    match_pattern,
    parse_key,
    parse_value,
    strict_date,
)

__all__ = ["MAX_SCANS_PER_PAGE", "MalformedKey", "Page", "UsageAggregationHandler", "UsageKey", "UsageParams",
           "UsageReader", "glob_escape", "key_date", "match_pattern", "parse_key", "parse_value", "strict_date"]

_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off"})


class UsageAggregationHandler(Handler):
    """Copies the usage counters of the requested dates into ``merchant_usage`` (set semantics)."""

    type = USAGE_TYPE
    display_name = "Usage aggregation (Redis → PostgreSQL)"
    Params = UsageParams
    streams = (Stream(name=STREAM, table="merchant_usage",
                      key_columns=("merchant_id", "usage_date", "metric_type"), value_columns=("value",),
                      conflict="update_if_changed", scope="run", bookkeeping_columns=("aggregated_at",)),)
    default_interval_minutes = 60
    accepts_windows = True
    cli_commands = USAGE_COMMANDS

    @classmethod
    def job_env_overrides(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """``ENABLE_USAGE_AGGREGATION`` (true/false) sets ``enabled``; ``USAGE_AGGREGATION_INTERVAL``
        (milliseconds, rounded up to whole minutes) sets ``interval_minutes`` (the fold drops ``cron``)."""
        out: dict[str, Any] = {}
        enabled = environ.get("ENABLE_USAGE_AGGREGATION", "").strip()
        if enabled:
            if enabled.lower() not in _TRUE | _FALSE:
                raise ConfigError(f"must be true or false, got {enabled!r}", key="ENABLE_USAGE_AGGREGATION")
            out["enabled"] = enabled.lower() in _TRUE
        interval = environ.get("USAGE_AGGREGATION_INTERVAL", "").strip()
        if interval:
            if not (interval.isascii() and interval.isdigit()) or int(interval) < 1:
                raise ConfigError(f"must be a positive number of milliseconds, got {interval!r}",
                                  key="USAGE_AGGREGATION_INTERVAL")
            minutes = -(-int(interval) // 60_000)
            if minutes > 1440:
                raise ConfigError(f"{interval} ms is {minutes} minutes, more than 1440 (one day)",
                                  key="USAGE_AGGREGATION_INTERVAL")
            out["interval_minutes"] = minutes
        return out

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        p: UsageParams = params
        state = self.resume_state(ctx.checkpoint(STREAM), p)
        if state["done"]:
            return
        dates = [dt.date.fromisoformat(d) for d in state["dates"]]
        ctx.log.info("usage_aggregation_started", dates=state["dates"], merchant=p.merchant,
                     resumed_from=state["cursor"] or None)
        reader = UsageReader(ctx.redis, dates, key_prefix=p.key_prefix, merchant=p.merchant,
                             chunk_size=p.chunk_size, batch_size=p.batch_size, scan_count=p.scan_count)
        checked = int(state["keys"])
        async for page in reader.pages(int(state["cursor"])):
            checked += page.checked
            ctx.report_progress(done=checked)
            cursor = {**state, "cursor": page.cursor, "keys": checked, "done": page.cursor == 0}
            yield Batch(stream=STREAM, records=page.records, rejected=page.rejected, checkpoint=cursor,
                        items_checked=page.checked, size_bytes=64 * (len(page.records) + len(page.rejected)))

    @staticmethod
    def resume_state(cursor: Any, params: UsageParams) -> dict[str, Any]:
        """The committed checkpoint when it belongs to these params, else a fresh start from today."""
        selection = params.selection()
        if isinstance(cursor, dict) and cursor.get("version") == CHECKPOINT_VERSION \
                and cursor.get("params") == selection:
            return cursor
        today = dt.datetime.now(dt.UTC).date()
        return {"version": CHECKPOINT_VERSION, "params": selection, "cursor": 0, "keys": 0, "done": False,
                "dates": [d.isoformat() for d in params.dates(today)]}
