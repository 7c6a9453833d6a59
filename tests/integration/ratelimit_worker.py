"""A worker process for the multi-process rate-limit tests and benchmark (run as a script).

Start-up is synchronised: once set up, a worker creates ``<out>.ready`` and waits for the ``--go``
file, which holds the common start time (epoch seconds). ``limiter`` mode: ``--tasks`` coroutines
acquire admissions from the shared limiter from that time for ``--duration`` seconds and write one JSON
line per admission (``at_us``: the reserved slot on the Redis clock, ``shared``) to ``--out``.
``http`` mode: the same coroutines GET ``--url`` through :class:`batcher.http.HttpRuntime` (sending
``X-Worker``) and write one line per finished request; ``--max-in-interval 0`` leaves the namespace
unlimited (only the shared 429 pause holds it, pushed over the runtime's pause feed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from batcher.connections import redis_client
from batcher.context import RunState as Counters  # the runner's own RunAccounting
from batcher.http import HttpRuntime
from batcher.ratelimit import RateLimiter
from batcher.settings import RateLimitSettings
from tests.polling import wait_for


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("limiter", "http"), default="limiter")
    p.add_argument("--redis", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--interval-ms", type=int, default=1000)
    p.add_argument("--max-in-interval", type=int, required=True, help="0: the namespace is unlimited")
    p.add_argument("--go", required=True, help="file that will hold the start time (epoch seconds)")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--url")
    p.add_argument("--worker", default="w")
    return p.parse_args()


async def start_time(args: argparse.Namespace) -> float:
    """Say we are ready, wait for the go file, then sleep until the start time it holds."""
    Path(args.out + ".ready").touch()
    go = Path(args.go)
    await wait_for(go.exists, 60, 0.01, what=f"the go file {go}")  # another process creates it
    start = float(go.read_text())
    await asyncio.sleep(max(0.0, start - time.time()))  # the synchronised start itself: every worker at once
    return start


async def limiter_mode(args: argparse.Namespace,
                       limits: dict[str, RateLimitSettings]) -> list[dict[str, Any]]:
    client = redis_client(args.redis)
    limiter = RateLimiter(limits, client)
    await limiter.load()
    cancelled = asyncio.Event()
    rows: list[dict[str, Any]] = []
    end = await start_time(args) + args.duration

    async def loop() -> None:
        while True:
            admission = await limiter.acquire(args.namespace, cancelled)
            if admission.at_us / 1e6 >= end:
                return
            rows.append({"at_us": admission.at_us, "shared": admission.shared})

    await asyncio.gather(*(loop() for _ in range(args.tasks)))
    await client.aclose()
    return rows


async def http_mode(args: argparse.Namespace,
                    limits: dict[str, RateLimitSettings]) -> list[dict[str, Any]]:
    runtime = HttpRuntime(limits, args.redis, backoff_base_s=0.01, backoff_max_s=0.05)
    await runtime.start()
    counters = Counters()
    client = runtime.client(args.namespace, accounting=counters, cancelled=asyncio.Event())
    rows: list[dict[str, Any]] = []
    end = await start_time(args) + args.duration

    async def loop() -> None:
        while time.time() < end:
            await client.get_json(args.url, headers={"X-Worker": args.worker})
            rows.append({"done": time.time()})

    await asyncio.gather(*(loop() for _ in range(args.tasks)))
    await runtime.close()
    rows.append({"api_calls": counters.api_calls})
    return rows


def main() -> None:
    args = parse_args()
    limits = {args.namespace: RateLimitSettings.model_validate(
        {"interval_ms": args.interval_ms, "max_in_interval": args.max_in_interval})} if args.max_in_interval else {}
    run = limiter_mode if args.mode == "limiter" else http_mode
    rows = asyncio.run(run(args, limits))
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
