"""HubSpot API calls per 1,000 records: a first sync and an incremental sync vs the minimum the API allows.

Runs the ``hubspot`` handler in-process (real runner, PostgreSQL and Redis) against the fake HubSpot API
(``batcher.fakes.hubspot``) and counts every request the fake answered:

- first sync: ``--records`` contacts through the list endpoint (100 per page, its maximum) plus property
  discovery and the first archived scan; the minimum is records ÷ 100 (and ÷ 200, search's page size);
- incremental sync: ``--changed`` records modified since (``--tie`` of them sharing each modification
  millisecond), read by keyset search (200 per page); the minimum is changed ÷ 200.

    .venv/bin/python bench/hubspot_calls.py --records 20000 --changed 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from batcher.fakes.hubspot import FakeHubSpot, FakeOptions
from batcher.testing import run_job_once, test_settings
from bench.common import claimed_redis_db, emit_result, temporary_database

FAST = {"interval_ms": 1000, "max_in_interval": 1_000_000}  # benchmarks run without limits


async def sync(settings: Any, fake: FakeHubSpot) -> dict[str, Any]:
    params = {"base_url": fake.url, "objects": ["contacts"], "settle_seconds": 0}
    before = len(fake.log)
    summary = await run_job_once(settings, "hubspot", params, literal_secrets={"access_token": "pat-test-token"})
    if summary["status"] != "succeeded":
        raise SystemExit(f"run failed: {summary}")
    summary["fake_calls"] = len(fake.log) - before
    return summary


def line(name: str, records: int, calls: int, page: int) -> dict[str, Any]:
    per = 1000 * calls / records
    minimum = 1000 / page
    print(f"  {name:<22} {records:>7} records {calls:>6} calls  {per:7.2f} calls/1,000  "
          f"minimum {minimum:5.2f} (records ÷ {page})  ratio {per / minimum:5.3f}", flush=True)
    emit_result(f"hubspot: API calls per 1,000 records, {name}", per, "calls / 1,000 records", baseline=minimum,
                baseline_label=f"the API's minimum (records ÷ {page})", goal="near the minimum (≤ 1.15×)",
                met=per / minimum <= 1.15, note=f"{records} records, {calls} calls")
    return {"name": name, "records": records, "calls": calls, "per_1000": per, "minimum_per_1000": minimum}


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    with claimed_redis_db() as redis_url:
        async with temporary_database("bench_hubspot") as db_url:
            settings = test_settings(db_url, redis_url, rate_limits={"hubspot:api:": FAST, "hubspot:search:": FAST})
            async with FakeHubSpot(FakeOptions(records={"contacts": args.records})) as fake:
                first = await sync(settings, fake)
                at = int(time.time() * 1000)
                for n in range(args.changed):
                    fake.touch("contacts", [1 + n * 7 % args.records], at_ms=at + n // args.tie)
                # the search reads what was modified before it starts: let the clock pass the last touch
                await asyncio.sleep(max(0.0, (at + args.changed // args.tie + 2) / 1000 - time.time()))
                second = await sync(settings, fake)
    print(f"hubspot API calls (first sync: list endpoint, 100 per page; incremental: keyset search, "
          f"200 per page, {args.tie} records per modification ms):")
    results = [line("first sync", first["records"], first["fake_calls"], 100)]
    print(f"  {'':<22} {'':>7}         {'':>6}        same vs search's page: minimum {1000 / 200:5.2f}, "
          f"ratio {results[0]['per_1000'] / 5:5.3f}")
    results.append(line("incremental sync", second["records"], second["fake_calls"], 200))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--changed", type=int, default=5_000)
    parser.add_argument("--tie", type=int, default=1, help="records sharing each modification millisecond")
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "hubspot_calls.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
