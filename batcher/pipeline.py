"""Bounded prefetch of a handler's batches (DESIGN §7): the handler produces ahead while a batch commits.

Owns the producer task and its queue, nothing else: the runner writes each batch (fence, dead letters,
rows, checkpoint, counters in one transaction) as it takes it from here.

    async with prefetching(handler.run(ctx, params), depth=2, max_bytes=64 << 20) as batches:
        async for batch in batches:
            await commit_batch(batch)          # the handler is already producing the next ones

Guarantees:

- order is preserved; an exception raised by the handler reaches the consumer after every batch the
  handler yielded before it, as the same exception object;
- at most ``depth`` batches are ahead of the consumer (queued, or being produced): the producer asks the
  source for the next batch only while fewer than ``depth`` are queued and the queued batches hold fewer
  than ``max_bytes`` (so the bytes bound may be overshot by one batch; one batch is always allowed);
- ``depth=0`` builds nothing ahead: the source is asked for a batch only once the consumer waits for one
  (for a source that gathers its input in a task of its own and builds each batch from everything
  gathered by then: the batches grow while a commit is slow, and the last one takes all that is left);
- leaving the block (early ``break``, an exception, cancellation) cancels the producer and closes the
  source generator (``aclose``), so its ``finally`` blocks run before the block exits.

A batch's size is ``Batch.size_bytes`` when the handler sets it, else a cheap estimate from a sample of
its records (:func:`estimate_size`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from batcher.handler import Batch

DEFAULT_DEPTH = 2
DEFAULT_MAX_BYTES = 64 << 20
_SAMPLE = 8
_RECORD_OVERHEAD = 64


class Prefetcher:
    """The consumer side of a prefetching producer task; iterate it with ``async for``."""

    def __init__(self, source: AsyncIterator[Batch], *, depth: int, max_bytes: int) -> None:
        if depth < 0:
            raise ValueError("prefetch depth must be at least 0")
        self._source = source
        self._depth = depth
        self._max_bytes = max_bytes
        self._queue: deque[tuple[Batch, int]] = deque()
        self._queued_bytes = 0
        self._done = False
        self._error: BaseException | None = None
        self._ready = asyncio.Event()  # set when a batch was queued or the producer finished
        self._room = asyncio.Event()  # set when the consumer took a batch (depth 0: when it waits for one)
        self._wanted = False  # depth 0: the consumer is waiting for a batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._produce(), name="batcher-prefetch")

    def _has_room(self) -> bool:
        if self._depth == 0:
            return self._wanted and not self._queue
        if not self._queue:
            return True
        return len(self._queue) < self._depth and self._queued_bytes < self._max_bytes

    async def _produce(self) -> None:
        try:
            while True:
                while not self._has_room():
                    self._room.clear()
                    await self._room.wait()
                try:
                    batch = await anext(self._source)
                except StopAsyncIteration:
                    return
                size = batch.size_bytes or estimate_size(batch)
                self._queue.append((batch, size))
                self._queued_bytes += size
                self._ready.set()
        except Exception as exc:  # noqa: BLE001 - the handler failed: handed to the consumer after the batches before it
            self._error = exc
        except asyncio.CancelledError as exc:
            self._error = exc
            raise
        finally:
            self._done = True
            self._ready.set()
            await _close(self._source)

    def __aiter__(self) -> Prefetcher:
        return self

    async def __anext__(self) -> Batch:
        while not self._queue and not self._done:
            self._ready.clear()
            if not self._depth:
                self._wanted = True
                self._room.set()
            await self._ready.wait()
        self._wanted = False
        if self._queue:
            batch, size = self._queue.popleft()
            self._queued_bytes -= size
            self._room.set()
            return batch
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel the producer (closing the source) and wait for it; idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        self._queue.clear()
        # the producer's outcome was already handed over (or is moot): only wait for its cleanup, which
        # a second cancellation of the consumer must not interrupt
        await asyncio.shield(_settle(task))
        self._queued_bytes = 0


async def _settle(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _close(source: AsyncIterator[Batch]) -> None:
    close = getattr(source, "aclose", None)
    if close is not None:
        await close()


@contextlib.asynccontextmanager
async def prefetching(source: AsyncIterator[Batch], *, depth: int = DEFAULT_DEPTH,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> AsyncIterator[Prefetcher]:
    """Run ``source`` in a producer task for the duration of the block; yields the batches in order."""
    prefetcher = Prefetcher(source, depth=depth, max_bytes=max_bytes)
    prefetcher.start()
    try:
        yield prefetcher
    finally:
        await prefetcher.aclose()


async def prefetch(source: AsyncIterator[Batch], *, depth: int = DEFAULT_DEPTH,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> AsyncGenerator[Batch, None]:
    """Generator form of :func:`prefetching`; wrap it in ``contextlib.aclosing`` to stop early safely."""
    async with prefetching(source, depth=depth, max_bytes=max_bytes) as batches:
        async for batch in batches:
            yield batch


def estimate_size(batch: Batch) -> int:
    """Approximate bytes of a batch: ``len(repr())`` of a few evenly spaced records, scaled up."""
    total = _estimate(batch.records) + _estimate(batch.rejected)
    return max(total, 1)


def _estimate(items: Any) -> int:
    count = len(items)
    if not count:
        return 0
    step = max(count // _SAMPLE, 1)
    sample = [items[i] for i in range(0, count, step)][:_SAMPLE]
    per_item = sum(len(repr(item)) for item in sample) / len(sample)
    return int((per_item + _RECORD_OVERHEAD) * count)
