"""A daemon's stop can neither hang on a connection nobody releases nor hang silently."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from structlog.testing import capture_logs

from batcher import store
from batcher.shutdown import ShutdownMonitor, cancel_and_wait
from tests.polling import wait_for


async def _blocked_forever(release: asyncio.Event) -> None:
    await release.wait()


async def test_close_pool_terminates_a_pool_whose_connection_is_never_released(database_url: str) -> None:
    """asyncpg's ``Pool.close`` waits forever for an acquired connection; ``store.close_pool`` gives up
    after its timeout, terminates the pool (the held connection is closed too) and says so in the log."""
    pool = await store.create_pool(database_url, size=2)
    held = await pool.acquire()  # leaked on purpose: never released
    backend = held.get_server_pid()
    began = time.monotonic()
    with capture_logs() as logs:
        await asyncio.wait_for(store.close_pool(pool, timeout=0.5), 10)
    assert time.monotonic() - began < 5
    assert any(e["event"] == "pool_close_timeout" for e in logs), logs
    conn = await store.connect(database_url)
    try:
        async def backend_gone() -> bool:
            return not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend)

        await wait_for(backend_gone, 10, what="the held connection's backend to end")
    finally:
        await conn.close()


async def test_close_pool_closes_an_idle_pool_gracefully(database_url: str) -> None:
    """With every connection released, the pool closes without the fallback (no warning)."""
    pool = await store.create_pool(database_url, size=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    with capture_logs() as logs:
        await store.close_pool(pool, timeout=5)
    assert not any(e["event"] == "pool_close_timeout" for e in logs)
    try:
        await pool.fetchval("SELECT 1")
    except asyncpg.InterfaceError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("the pool still answered after close")


async def test_a_slow_shutdown_reports_its_step_and_what_each_task_awaits() -> None:
    """While a stop lasts, ``shutdown_slow`` is logged with the current step and, for a stuck task,
    the coroutine chain down to the await that does not return; nothing is logged once it is over."""
    release = asyncio.Event()
    stuck = asyncio.create_task(_blocked_forever(release), name="stuck-handler")
    monitor = ShutdownMonitor(every=0.05)
    with capture_logs() as logs:
        monitor.start("closing")
        async def reported() -> bool:
            return any(e["event"] == "shutdown_slow" for e in logs)

        await wait_for(reported, 10, what="a shutdown_slow report")
        await monitor.stop()
        reports = len(logs)
    report = next(e for e in logs if e["event"] == "shutdown_slow")
    assert report["step"] == "closing"
    tasks = {t["task"]: t["awaiting"] for t in report["tasks"]}
    assert "batcher-shutdown-monitor" not in tasks
    chain = tasks["stuck-handler"]
    assert chain[0].startswith("_blocked_forever (test_shutdown_bounded.py:")
    assert any(frame.startswith("Event.wait (locks.py:") for frame in chain), chain
    release.set()
    await stuck
    await asyncio.sleep(0.2)  # the behaviour under test: nothing more may be reported after stop()
    assert len(logs) == reports


async def test_cancel_and_wait_ends_a_task_that_lost_its_first_cancellation() -> None:
    """A task that swallows one cancellation (as a 3.11 ``wait_for`` racing its inner future can) is
    cancelled again and ends; the wait is bounded and reports a task that never ends."""
    swallowed = asyncio.Event()

    async def swallows_once() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.Event().wait()  # the second cancel ends it

    task = asyncio.create_task(swallows_once())
    await asyncio.sleep(0)  # one loop step, not a wait: the task starts and blocks in its wait before the cancel
    assert await cancel_and_wait(task, 10, again_every=0.05)
    assert swallowed.is_set() and task.cancelled()

    give_up = False

    async def never_ends() -> None:
        while not give_up:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()

    stubborn = asyncio.create_task(never_ends(), name="stubborn")
    await asyncio.sleep(0)  # one loop step, not a wait: the task starts and blocks in its wait before the cancel
    with capture_logs() as logs:
        assert not await cancel_and_wait(stubborn, 0.2, again_every=0.05)
    assert [e["task"] for e in logs if e["event"] == "task_did_not_stop"] == ["stubborn"]
    give_up = True
    stubborn.cancel()
    await asyncio.wait({stubborn}, timeout=10)
    assert stubborn.done()


async def test_cancel_once_lets_shielded_work_finish() -> None:
    """With ``again_every=None`` the task is cancelled once: shielded work it waits for after that
    cancel (a run recording its end) is not interrupted by further cancels."""
    finished = asyncio.Event()

    async def records_its_end() -> None:
        async def finish() -> None:
            await asyncio.sleep(0.3)  # the behaviour under test: work that outlasts several re-cancel periods
            finished.set()

        work = asyncio.ensure_future(finish())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await work

    task = asyncio.create_task(records_its_end())
    await asyncio.sleep(0)  # one loop step, not a wait: the task starts and blocks in its wait before the cancel
    assert await cancel_and_wait(task, 10, again_every=None)
    assert finished.is_set()
