"""What every benchmark needs: a throw-away migrated PostgreSQL database, a Redis db of its own, and
:func:`emit_result`, the machine-readable line ``make bench`` collects into ``bench/RESULTS.md``.

Benchmarks never touch data they did not create: the database is created and dropped here (on
``BENCH_DATABASE_URL``, default the local server's ``postgres``), and the Redis db number (1–9 on
``BENCH_REDIS_URL``) is claimed with the tests' lock scheme — ``SET lock token NX PX``, flushed keeping the
lock, renewed from a thread, released (flushed again) at the end; never FLUSHALL, never another db.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from batcher import store

BASE_DB = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BASE_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
#: Where ``make bench`` wants the RESULT lines too (one JSON object a line); unset: stdout only.
RESULTS_FILE = os.environ.get("BENCH_RESULTS_FILE")
LOCK_KEY = "batcher:test-session-lock"
LOCK_MS = 60_000
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RedisDbLock:
    """A free Redis db among 1–9, claimed with ``SET lock token NX PX`` and renewed until released."""

    def __init__(self, base: str = BASE_REDIS) -> None:
        self.base, self.token = base.rstrip("/"), uuid.uuid4().hex
        self.client: redis.Redis | None = None
        self._stop = threading.Event()

    def acquire(self) -> str:
        """The URL of the claimed db, emptied (the lock kept)."""
        for number in range(1, 10):
            client = redis.Redis.from_url(self.base, db=number, socket_timeout=5)
            if client.set(LOCK_KEY, self.token, nx=True, px=LOCK_MS):
                self.client = client
                self.flush()
                threading.Thread(target=self._renew, daemon=True).start()
                return f"{self.base}/{number}"
            client.close()
        raise SystemExit("no free Redis db among 1–9")

    def flush(self) -> None:
        assert self.client is not None
        pipe = self.client.pipeline(transaction=True)
        pipe.flushdb()
        pipe.set(LOCK_KEY, self.token, px=LOCK_MS)
        pipe.execute()

    def _renew(self) -> None:
        while not self._stop.wait(LOCK_MS / 3000):
            with contextlib.suppress(redis.RedisError):
                assert self.client is not None
                self.client.eval(_RENEW, 1, LOCK_KEY, self.token, LOCK_MS)

    def release(self, *, flush: bool = False) -> None:
        self._stop.set()
        if self.client is not None:
            if flush and self.client.get(LOCK_KEY) == self.token.encode():
                self.flush()
            self.client.eval(_RELEASE, 1, LOCK_KEY, self.token)
            self.client.close()


@contextlib.contextmanager
def claimed_redis_db(base: str = BASE_REDIS) -> Iterator[str]:
    """A Redis db of our own for the duration of the block, flushed before and after."""
    lock = RedisDbLock(base)
    url = lock.acquire()
    try:
        yield url
    finally:
        lock.release(flush=True)


@contextlib.asynccontextmanager
async def temporary_database(prefix: str, base: str = BASE_DB) -> AsyncIterator[str]:
    """A new migrated database, dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(base)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await store.connect(url)
        try:
            await store.migrate(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def emit_result(name: str, figure: float | None, unit: str, *, goal: str, met: bool | None,
                baseline: float | None = None, baseline_label: str = "", ratio: float | None = None,
                note: str = "") -> dict[str, Any]:
    """Print one benchmark figure as ``RESULT {json}`` (and append it to ``BENCH_RESULTS_FILE``).

    ``figure`` and ``baseline`` are in ``unit``; ``ratio`` defaults to figure / baseline; ``goal`` is the
    goal in words (``"≤ 1.1× fetch-only"``) and ``met`` whether this run met it (None: no goal). Every
    bench script calls this for each headline figure; ``bench/report.py`` turns the lines into a table.
    """
    if ratio is None and figure is not None and baseline:
        ratio = figure / baseline
    result = {"script": Path(sys.argv[0]).name, "name": name, "figure": _rounded(figure), "unit": unit,
              "baseline": _rounded(baseline), "baseline_label": baseline_label, "ratio": _rounded(ratio),
              "goal": goal, "met": met, "note": note}
    line = json.dumps(result, ensure_ascii=False)
    print(f"RESULT {line}", flush=True)
    if RESULTS_FILE:
        with open(RESULTS_FILE, "a", encoding="utf-8") as out:
            out.write(line + "\n")
    return result


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def plan_digest(lines: list[str]) -> list[str]:
    """A long EXPLAIN ANALYZE (the claim's is ~150 lines) cut to its CTEs, each with its top node, and the
    scans that ran: which index each probe used, how many times (loops), rows and time."""
    kept = []
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("CTE ") and i + 1 < len(lines):
            kept.append(f"{text}: {lines[i + 1].strip().removeprefix('->').strip()}")
        elif (" Scan " in text and "actual" in text and "never executed" not in text
              and "CTE Scan" not in text and "WorkTable" not in text):
            kept.append("  " + text.removeprefix("->").strip())
    return kept
