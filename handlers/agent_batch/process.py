"""Sending work to the processing service: per-item retries, bounded concurrency, chunks in order.

``POST {base_url}/requests`` with ``{template, input, user_id?, tenant_id?}`` → ``{output}``, through the
runtime's HTTP client (namespace ``agent:{base_url}``: rate limits, shared 429 pauses and accounting
come from there; a 429 is waited out and sent again by the client without costing an attempt). An item
whose request fails with a 5xx, a timeout, a connection error or an invalid answer is retried up to
``max_attempts`` times with exponential backoff (``retry_base_seconds`` × 2^(n-1), cut short by a cancel);
a 4xx other than 401/403 fails the item at once; 401/403 (a bad key) fail the run.

:func:`pipelined` keeps ``concurrency`` requests in flight across chunk boundaries: the next chunks'
requests start while the oldest chunk finishes, and chunks come out in order (committed in order).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from batcher import PermanentError, RunCancelledError, RunContext, TransientError
from handlers.agent_batch.params import AgentParams

T = TypeVar("T")
R = TypeVar("R")
AUTH_STATUSES = (401, 403)


@dataclass(frozen=True)
class Outcome:
    """How one request ended."""

    status: str  # succeeded | failed
    output: Any
    error: str | None
    attempts: int


class Sender:
    """Sends one request with the item's retry policy."""

    def __init__(self, ctx: RunContext, params: AgentParams) -> None:
        base = params.base_url.rstrip("/")
        self.client = ctx.http(f"agent:{base}")
        self.url = base + "/requests"
        self.headers = {"Authorization": f"Bearer {params.api_key.get_secret_value()}"}
        self.max_attempts = params.max_attempts
        self.base_delay = params.retry_base_seconds
        self.cancelled = ctx.cancelled

    async def send(self, template: str, item_input: dict[str, Any], user_id: str = "",
                   tenant_id: str = "") -> Outcome:
        body: dict[str, Any] = {"template": template, "input": item_input}
        if user_id:
            body["user_id"], body["tenant_id"] = user_id, tenant_id
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                answer = await self.client.request_json("POST", self.url, json=body, headers=self.headers)
                if isinstance(answer, dict) and "output" in answer:
                    return Outcome("succeeded", answer["output"], None, attempt)
                error = "invalid answer (no output)"
            except RunCancelledError:
                raise
            except PermanentError as exc:
                if getattr(exc, "status", None) in AUTH_STATUSES:
                    raise
                return Outcome("failed", None, str(exc), attempt)
            except TransientError as exc:
                error = str(exc)
            if attempt < self.max_attempts:
                await self._backoff(attempt)
        return Outcome("failed", None, error, self.max_attempts)

    async def _backoff(self, attempt: int) -> None:
        delay = self.base_delay * 2 ** (attempt - 1)
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(self.cancelled.wait(), timeout=delay)
        except TimeoutError:
            return
        raise RunCancelledError("cancelled")


def lookahead(concurrency: int, chunk_size: int) -> int:
    """Chunks kept in flight so the requests of later chunks fill the slots the oldest leaves free."""
    return max(2, math.ceil(2 * concurrency / chunk_size))


async def pipelined(chunks: AsyncIterator[T], work: Callable[[T], Awaitable[R]],
                    depth: int) -> AsyncIterator[tuple[T, R]]:
    """``(chunk, await work(chunk))`` in chunk order, with up to ``depth`` chunks' work running at once."""
    pending: deque[tuple[T, asyncio.Task[R]]] = deque()
    try:
        async for chunk in chunks:
            pending.append((chunk, asyncio.ensure_future(work(chunk))))
            if len(pending) >= depth:
                chunk0, task = pending.popleft()
                yield chunk0, await task
        while pending:
            chunk0, task = pending.popleft()
            yield chunk0, await task
    finally:
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(t for _, t in pending), return_exceptions=True)
