"""Issue 14 defect 11: a stream with ``sink = "mongo"`` is refused at registry load until a MongoDB sink
exists (it used to be COPYed into PostgreSQL silently).

The handler is a plugin registered in the ``batcher.handlers`` entry-point group through a
``*.dist-info`` directory on the path (what ``pip install`` of a plugin package leaves behind), so the
real ``importlib.metadata`` discovery loads it; the daemon test runs ``batcher run`` as a process with
that directory on PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from batcher.errors import ConfigError
from batcher.handler import Batch, Handler, HandlerParams, RunContext, Stream
from batcher.registry import load_registry

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]

PLUGIN = '''
from batcher.handler import Handler, HandlerParams, Stream


class MongoEvents(Handler):
    type = "mongo_events"
    display_name = "Mongo events"
    Params = HandlerParams
    streams = (Stream("events", "events", ("id",), ("body",)),
               Stream("archive", "events_archive", ("id",), ("body",), sink="mongo"))

    async def run(self, ctx, params):
        if False:
            yield None
'''
MESSAGE = ("handler plugin 'mongo_events' (MongoEvents, job type 'mongo_events'): stream 'archive' has "
           "sink 'mongo', but the MongoDB sink is not available yet (only sink='postgres' is)")


class MongoHandler(Handler):
    type = "mongo_test"
    display_name = "Mongo test"
    Params = HandlerParams
    streams = (Stream("docs", "docs", ("id",), ("body",), sink="mongo"),)

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        if False:
            yield Batch("docs")


def _plugin_dir(root: Path) -> Path:
    """A module and a dist-info registering it in the ``batcher.handlers`` entry-point group."""
    root.mkdir()
    (root / "mongo_plugin.py").write_text(PLUGIN)
    info = root / "mongo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mongo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[batcher.handlers]\nmongo_events = mongo_plugin:MongoEvents\n")
    return root


def test_a_handler_with_a_mongo_stream_is_refused() -> None:
    """check_handler raises ConfigError naming the handler, the stream and that the MongoDB sink is not
    available yet; a handler with only postgres streams passes."""
    from batcher.registry import check_handler

    with pytest.raises(ConfigError) as raised:
        check_handler(MongoHandler)
    assert str(raised.value) == ("handler MongoHandler (job type 'mongo_test'): stream 'docs' has sink "
                                 "'mongo', but the MongoDB sink is not available yet (only sink='postgres' is)")
    from handlers.synthetic import SyntheticHandler

    check_handler(SyntheticHandler)


def test_registry_load_refuses_a_plugin_with_a_mongo_stream(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """load_registry() with an installed plugin whose stream has sink='mongo' raises ConfigError with the
    plugin's entry-point name, class, job type, stream and the 'not available yet' reason."""
    monkeypatch.syspath_prepend(str(_plugin_dir(tmp_path / "site")))
    with pytest.raises(ConfigError) as raised:
        load_registry()
    assert str(raised.value) == MESSAGE


def test_daemon_with_a_mongo_plugin_exits_2_with_the_message(tmp_path: Path, database_url: str,
                                                             redis_url: str) -> None:
    """`batcher run` with such a plugin installed exits 2 with one line on stderr saying so, before it
    starts anything."""
    site = _plugin_dir(tmp_path / "site")
    config = tmp_path / "batcher.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHER_")}
    env.update({"PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                "BATCHER_CONFIG": str(config), "BATCHER_DATABASE_URL": database_url,
                "BATCHER_REDIS_URL": redis_url, "BATCHER_DATA_DIR": str(tmp_path / "data"),
                "BATCHER_API_PORT": "0"})
    done = subprocess.run([sys.executable, "-m", "batcher", "run"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=45, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"batcher: {MESSAGE}"
