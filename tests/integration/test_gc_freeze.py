"""The process's start-up objects leave the cyclic garbage collector once the services are open (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import asyncio, gc, json
from batcher.app import load_config, open_services
from batcher.gcpolicy import freeze_startup_objects

async def main():
    config = load_config()
    before = gc.get_freeze_count()
    async with open_services(config, start_embedded=False, schema="check"):
        first = gc.get_freeze_count()
    async with open_services(config, start_embedded=False, schema="check"):
        again = freeze_startup_objects()
    a, b = [], []
    a.append(b); b.append(a)  # a cycle made after start-up is still the collector's
    del a, b
    collected = gc.collect()
    print(json.dumps({"before": before, "first": first, "again": again, "collected": collected,
                      "threshold": gc.get_threshold()}))

asyncio.run(main())
"""


def test_open_services_freezes_startup_objects_once(database_url: str, redis_url: str, tmp_path: Path) -> None:
    """Opening the services moves every start-up object out of the collector's reach (``gc.freeze``), so
    full collections during a run no longer walk the modules and classes; only once per process, and
    cycles made later are still collected; the young generation is collected less often."""
    config = tmp_path / "empty.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHER_")}
    env.update(BATCHER_DATABASE_URL=database_url, BATCHER_REDIS_URL=redis_url, BATCHER_CONFIG=str(config),
               BATCHER_LOG_LEVEL="warning")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts["before"] == 0
    assert counts["first"] > 10_000  # modules, classes, functions, schemas
    assert counts["again"] is False  # the second opening froze nothing more
    assert counts["collected"] >= 2
    assert counts["threshold"][0] >= 10_000  # young collections that would free next to nothing are rarer
