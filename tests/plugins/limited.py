"""Handler plugins that declare default rate limits, as a third-party package would: ``LimitedHandler``
owns two namespaces of its upstream; ``ClashingHandler`` declares a built-in handler's namespace with a
different limit (a configuration error at registry load); ``AgreeingHandler`` declares one with the same;
``MalformedHandler`` gives a plain dict instead of a ``batcher.RateLimit``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from batcher import Batch, Handler, HandlerParams, RateLimit, RunContext

API = RateLimit(interval_ms=1_000, max_in_interval=7)
SEARCH = RateLimit(interval_ms=60_000, max_in_interval=30, burst=2, quota_pause_ms=5_000)
RATE_LIMITS = {
    # The upstream's documented limits (made up for the test): 7 requests/s, searches 30/minute.
    "limited:api:": API,
    "limited:search:": SEARCH,
}
CLASHING = {"github:api:": RateLimit(interval_ms=1_000, max_in_interval=1_000)}
AGREEING = {"github:api:": RateLimit(interval_ms=3_600_000, max_in_interval=5_000)}
MALFORMED: dict[str, Any] = {"limited:api:": {"interval_ms": 1_000}}


class LimitedHandler(Handler):
    type = "limited-plugin"
    display_name = "Limited (test plugin)"
    Params = HandlerParams
    streams = ()
    default_rate_limits = RATE_LIMITS

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        return
        yield


class ClashingHandler(LimitedHandler):
    type = "clashing-plugin"
    default_rate_limits = CLASHING


class AgreeingHandler(LimitedHandler):
    type = "agreeing-plugin"
    default_rate_limits = AGREEING


class MalformedHandler(LimitedHandler):
    type = "malformed-plugin"
    default_rate_limits = MALFORMED
