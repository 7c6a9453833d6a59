"""Bounded prefetch: order, bounds in batches and bytes, early stop, cancellation, error propagation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from batcher.handler import Batch
from batcher.pipeline import estimate_size, prefetch, prefetching


class Source:
    """A handler-like async generator that counts what it produced and whether it was closed."""

    def __init__(self, count: int, *, size_bytes: int = 0, fail_after: int | None = None,
                 block_after: int | None = None) -> None:
        self.count = count
        self.size_bytes = size_bytes
        self.fail_after = fail_after
        self.block_after = block_after
        self.produced = 0
        self.closed = False
        self.blocked = asyncio.Event()
        self.error = RuntimeError("handler failed")

    async def run(self) -> AsyncIterator[Batch]:
        try:
            for n in range(self.count):
                if self.fail_after is not None and n == self.fail_after:
                    raise self.error
                if self.block_after is not None and n == self.block_after:
                    self.blocked.set()
                    await asyncio.Event().wait()  # never set: only cancellation ends it
                self.produced += 1
                yield Batch(stream="s", records=[(n,)], size_bytes=self.size_bytes)
        finally:
            self.closed = True


async def settle() -> None:
    """Let every ready task run until it blocks (scheduler turns, not wall-clock time)."""
    for _ in range(100):
        await asyncio.sleep(0)  # one scheduler turn (no time passes): nothing here can be awaited instead


def prefetch_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "batcher-prefetch" and not t.done()]


async def test_order_is_preserved_and_every_batch_arrives() -> None:
    """All batches arrive in the order the handler yielded them; the source is closed at the end."""
    source = Source(25)
    async with prefetching(source.run(), depth=3, max_bytes=1 << 20) as batches:
        seen = [b.records[0][0] async for b in batches]
    assert seen == list(range(25))
    assert source.closed and prefetch_tasks() == []


@pytest.mark.parametrize("depth", [1, 2, 5])
async def test_producer_never_runs_more_than_depth_batches_ahead(depth: int) -> None:
    """Counted, not timed: the handler is at most ``depth`` batches ahead, and does reach that depth."""
    source = Source(20)
    received = 0
    async with prefetching(source.run(), depth=depth, max_bytes=1 << 30) as batches:
        async for _ in batches:
            received += 1
            await settle()  # the consumer "commits" while the producer runs as far as it may
            assert source.produced - received <= depth
            assert source.produced == min(received + depth, 20)
    assert received == 20


async def test_byte_bound_limits_how_far_ahead_the_producer_runs() -> None:
    """With 100-byte batches and max_bytes 250 the producer stops after queueing 3 (one overshoot)."""
    source = Source(20, size_bytes=100)
    async with prefetching(source.run(), depth=10, max_bytes=250) as batches:
        await settle()
        assert source.produced == 3
        await anext(batches)
        await settle()
        assert source.produced == 4


async def test_a_batch_larger_than_max_bytes_still_flows() -> None:
    """A single batch over the byte bound is delivered (one batch is always allowed)."""
    source = Source(3, size_bytes=10_000)
    async with prefetching(source.run(), depth=2, max_bytes=1) as batches:
        assert len([b async for b in batches]) == 3


async def test_early_stop_closes_the_source_and_the_producer() -> None:
    """Breaking out of the block cancels the producer and runs the handler's finally."""
    source = Source(100)
    async with prefetching(source.run(), depth=2, max_bytes=1 << 20) as batches:
        async for batch in batches:
            if batch.records[0][0] == 3:
                break
    assert source.closed and source.produced <= 6
    assert prefetch_tasks() == []


async def test_generator_form_closes_the_source_with_aclosing() -> None:
    """prefetch() wrapped in contextlib.aclosing closes the handler on an early stop too."""
    source = Source(100)
    async with contextlib.aclosing(prefetch(source.run(), depth=2, max_bytes=1 << 20)) as batches:
        async for _ in batches:
            break
    assert source.closed and prefetch_tasks() == []


async def test_handler_error_arrives_after_the_batches_before_it() -> None:
    """An exception from the handler is re-raised at the consumer, in order, as the same object."""
    source = Source(10, fail_after=4)
    seen: list[int] = []
    with pytest.raises(RuntimeError) as caught:
        async with prefetching(source.run(), depth=2, max_bytes=1 << 20) as batches:
            async for batch in batches:
                seen.append(batch.records[0][0])
                await settle()
    assert caught.value is source.error
    assert seen == [0, 1, 2, 3]
    assert prefetch_tasks() == []


async def test_consumer_error_closes_the_source() -> None:
    """A failure in the consumer (a commit failing) leaves the block with the producer stopped."""
    source = Source(100)
    with pytest.raises(KeyError):
        async with prefetching(source.run(), depth=2, max_bytes=1 << 20) as batches:
            async for _ in batches:
                raise KeyError("commit failed")
    assert source.closed and prefetch_tasks() == []


async def cancel_once_blocked(consume: Callable[[], Awaitable[None]], source: Source) -> None:
    """Run ``consume`` until ``source`` blocks, then cancel it; it must end cancelled."""
    task = asyncio.create_task(consume())
    await source.blocked.wait()
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelling_the_consumer_cancels_the_producer() -> None:
    """Cancelling a consumer that waits on a blocked handler cancels the producer and closes the source."""
    source = Source(10, block_after=2)
    got: list[int] = []

    async def consume() -> None:
        async with prefetching(source.run(), depth=2, max_bytes=1 << 20) as batches:
            async for batch in batches:
                got.append(batch.records[0][0])

    await cancel_once_blocked(consume, source)
    assert got == [0, 1]
    assert source.closed and prefetch_tasks() == []


async def test_depth_must_not_be_negative() -> None:
    """A negative depth is refused (0 is on-demand production, below)."""
    with pytest.raises(ValueError, match="depth"):
        async with prefetching(Source(1).run(), depth=-1, max_bytes=1):
            pass


async def test_depth_zero_asks_the_source_only_while_the_consumer_waits() -> None:
    """depth=0: nothing is produced ahead — the source is asked for a batch only once the consumer waits
    for one; every batch still arrives, in order, and the source is closed at the end."""
    source = Source(6)
    seen: list[int] = []
    async with prefetching(source.run(), depth=0, max_bytes=1 << 20) as batches:
        await settle()
        assert source.produced == 0
        async for batch in batches:
            seen.append(batch.records[0][0])
            await settle()  # the consumer "commits": the producer must not run ahead meanwhile
            assert source.produced == len(seen)
    assert seen == list(range(6))
    assert source.closed and prefetch_tasks() == []


@pytest.mark.parametrize("depth", [0, 1, 2])
async def test_cancelling_a_consumer_waiting_for_a_blocked_handler_closes_it_cleanly(depth: int) -> None:
    """Cancelled while it waits for the next batch of a blocked handler (the runner's cancel path), the
    consumer leaves the block with the source closed once and no error of its own (e.g. "aclose():
    asynchronous generator is already running")."""
    source = Source(10, block_after=2)
    got: list[int] = []

    async def consume() -> None:
        async with prefetching(source.run(), depth=depth, max_bytes=1 << 20) as batches:
            while True:
                waiter = asyncio.ensure_future(anext(batches))
                try:
                    got.append((await waiter).records[0][0])
                finally:
                    waiter.cancel()

    await cancel_once_blocked(consume, source)
    assert got == [0, 1]
    assert source.closed and prefetch_tasks() == []


def test_size_estimate_scales_with_the_records() -> None:
    """Batches without size_bytes are estimated cheaply, in proportion to their records."""
    small = Batch(stream="s", records=[(n, "x" * 10) for n in range(100)])
    large = Batch(stream="s", records=[(n, "x" * 1000) for n in range(100)])
    assert 0 < estimate_size(small) < estimate_size(large)
    assert estimate_size(large) >= 100 * 1000
    assert estimate_size(Batch(stream="s")) == 1
