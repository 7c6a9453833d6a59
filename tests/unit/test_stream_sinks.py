"""Issue 16: a stream with ``sink = "mongo"`` is accepted now that the MongoDB sink exists (issue 14 defect 11
refused it while it did not); a stream naming an unknown sink is still refused at registry load, and a job
that would write to MongoDB is refused when no MongoDB is configured.

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

from batcher.errors import ConfigError, PermanentError
from batcher.handler import Batch, Handler, HandlerParams, RunContext, Stream
from batcher.registry import check_handler, load_registry
from batcher.sinks import SinkRoute, require_sinks

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]

PLUGIN = '''
from batcher.handler import Handler, HandlerParams, Stream


class MongoEvents(Handler):
    type = "mongo_events"
    display_name = "Mongo events"
    Params = HandlerParams
    streams = (Stream("events", "events", ("id",), ("body",)),
               Stream("archive", "events_archive", ("id",), ("body",), sink="SINK"))

    async def run(self, ctx, params):
        if False:
            yield None
'''
MESSAGE = ("handler plugin 'mongo_events' (MongoEvents, job type 'mongo_events'): stream 'archive' has "
           "unknown sink 'cassandra' (known: postgres, mongo)")


class MongoHandler(Handler):
    type = "mongo_test"
    display_name = "Mongo test"
    Params = HandlerParams
    streams = (Stream("docs", "docs", ("id",), ("body",), sink="mongo"),)

    async def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        if False:
            yield Batch("docs")


class UnknownSinkHandler(MongoHandler):
    type = "unknown_sink"
    streams = (Stream("docs", "docs", ("id",), ("body",), sink="cassandra"),)  # type: ignore[arg-type]


def _plugin_dir(root: Path, sink: str) -> Path:
    """A module and a dist-info registering it in the ``batcher.handlers`` entry-point group."""
    root.mkdir()
    (root / f"{sink}_plugin.py").write_text(PLUGIN.replace("SINK", sink))  # one module name per sink: the
    info = root / f"{sink}_plugin-0.1.dist-info"                            # import cache keeps the first
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {sink}-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[batcher.handlers]\nmongo_events = {sink}_plugin:MongoEvents\n")
    return root


def test_a_handler_with_a_mongo_stream_is_accepted_and_an_unknown_sink_refused() -> None:
    """check_handler accepts a stream with sink='mongo' and refuses one naming an unknown sink, with a
    message naming the handler, the stream, the sink and the known sinks."""
    check_handler(MongoHandler)
    with pytest.raises(ConfigError) as raised:
        check_handler(UnknownSinkHandler)
    assert str(raised.value) == ("handler UnknownSinkHandler (job type 'unknown_sink'): stream 'docs' has "
                                 "unknown sink 'cassandra' (known: postgres, mongo)")


@pytest.mark.parametrize("depth", [-1, 1001, 2.0, True, "2"])
def test_a_handler_prefetch_depth_the_pipeline_cannot_use_is_refused(depth: Any) -> None:
    """Handler.prefetch_batches is None (the daemon's setting) or an integer from 0 to 1000."""

    class Deep(MongoHandler):
        type = "deep"
        prefetch_batches = depth

    with pytest.raises(ConfigError, match="prefetch_batches must be None or an integer from 0 to 1000"):
        check_handler(Deep)
    for fine in (None, 0, 1, 1000):
        Deep.prefetch_batches = fine
        check_handler(Deep)


def test_registry_loads_a_plugin_with_a_mongo_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_registry() with an installed plugin whose stream has sink='mongo' registers its job type."""
    monkeypatch.syspath_prepend(str(_plugin_dir(tmp_path / "site", "mongo")))
    assert load_registry()["mongo_events"].stream("archive").sink == "mongo"


def test_registry_load_refuses_a_plugin_with_an_unknown_sink(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """load_registry() with a plugin whose stream names an unknown sink raises ConfigError naming the
    plugin's entry-point name, class, job type, stream and sink."""
    monkeypatch.syspath_prepend(str(_plugin_dir(tmp_path / "site", "cassandra")))
    with pytest.raises(ConfigError) as raised:
        load_registry()
    assert str(raised.value) == MESSAGE


def test_a_run_whose_streams_go_to_mongodb_is_refused_without_mongodb() -> None:
    """At run start (require_sinks): a job sink 'mongo', or a handler's own mongo stream, with no MongoDB
    configured is a PermanentError saying so; an unknown job sink too; PostgreSQL needs nothing."""
    from handlers.synthetic import SyntheticHandler

    require_sinks(SyntheticHandler.streams, SinkRoute(), "job")
    with pytest.raises(PermanentError, match="goes to MongoDB, but no MongoDB is configured"):
        require_sinks(SyntheticHandler.streams, SinkRoute("mongo"), "job")
    with pytest.raises(PermanentError, match="goes to MongoDB, but no MongoDB is configured"):
        require_sinks(MongoHandler.streams, SinkRoute(), "job")
    with pytest.raises(PermanentError, match="unknown sink 'x'"):
        require_sinks(SyntheticHandler.streams, SinkRoute("x"), "job")


def _daemon(tmp_path: Path, database_url: str, redis_url: str, toml: str, site: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "batcher.toml"
    config.write_text(toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHER_") and not k.startswith("MONGODB")}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({"BATCHER_CONFIG": str(config), "BATCHER_DATABASE_URL": database_url,
                "BATCHER_REDIS_URL": redis_url, "BATCHER_DATA_DIR": str(tmp_path / "data"),
                "BATCHER_API_PORT": "0"})
    return subprocess.run([sys.executable, "-m", "batcher", "run"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=45, check=False)


def test_daemon_with_an_unknown_sink_plugin_exits_2_with_the_message(tmp_path: Path, database_url: str,
                                                                     redis_url: str) -> None:
    """`batcher run` with such a plugin installed exits 2 with one line on stderr saying so, before it
    starts anything."""
    done = _daemon(tmp_path, database_url, redis_url, "", _plugin_dir(tmp_path / "site", "cassandra"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"batcher: {MESSAGE}"


def test_a_job_with_sink_mongo_and_no_mongodb_stops_the_daemon_with_exit_2(tmp_path: Path, database_url: str,
                                                                           redis_url: str) -> None:
    """A job entry with ``sink = "mongo"`` while no MongoDB is configured is a configuration error naming
    the file, the job and the key; an unknown sink name is refused by the job's validation."""
    done = _daemon(tmp_path, database_url, redis_url,
                   '[jobs.docs]\ntype = "synthetic"\nsink = "mongo"\n')
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "docs" in last and "sink" in last and "no MongoDB is configured: set MONGODB_URI" in last, last
    done = _daemon(tmp_path, database_url, redis_url, '[jobs.docs]\ntype = "synthetic"\nsink = "oracle"\n')
    assert done.returncode == 2 and "sink" in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]


def test_the_mongodb_database_is_mongo_database_else_the_uris(tmp_path: Path) -> None:
    """database_name: ``mongo.database`` wins, else the URI's path (percent-decoded, query dropped, a
    mongodb+srv URI parsed without any DNS lookup); neither, or a URI that is not MongoDB's, is a
    ConfigError naming the key."""
    from batcher.sinks.mongo import database_name, mongo_uri

    assert database_name(mongo_uri("mongodb://u:p%2F@h1:1,h2:2/ingest", "w=1"), None) == "ingest"
    assert database_name("mongodb+srv://cluster.invalid/db%20x?retryWrites=true", None) == "db x"
    assert database_name("mongodb://h/x", "override") == "override"
    for uri, key in (("mongodb://h", "mongo.database"), ("mongodb://h/?w=1", "mongo.database"),
                     ("http://h/x", "mongo.uri")):
        with pytest.raises(ConfigError) as raised:
            database_name(uri, None)
        assert raised.value.key == key, uri


def test_config_load_requires_a_mongodb_database_only_when_something_writes_there(tmp_path: Path) -> None:
    """A MONGODB_URI without a database is fine while no job writes to MongoDB; a job with sink = "mongo"
    or ``mongo.history`` then needs one (exit 2 naming mongo.database); ``mongo.history`` without any
    MongoDB names mongo.history."""
    from batcher.app import load_config
    from batcher.settings import load_settings

    plain = tmp_path / "plain.toml"
    plain.write_text('[jobs.a]\ntype = "synthetic"\n')
    to_mongo = tmp_path / "mongo.toml"
    to_mongo.write_text('[jobs.a]\ntype = "synthetic"\nsink = "mongo"\n')
    history = tmp_path / "history.toml"
    history.write_text('[mongo]\nhistory = true\n')
    env = {"MONGODB_URI": "mongodb://127.0.0.1:1"}
    load_config(load_settings(env, config_path=plain))
    for path in (to_mongo, history):
        with pytest.raises(ConfigError) as raised:
            load_config(load_settings(env, config_path=path))
        assert raised.value.key == "mongo.database", path
    with pytest.raises(ConfigError) as raised:
        load_config(load_settings({}, config_path=history))
    assert raised.value.key == "mongo.history"
    load_config(load_settings({**env, "BATCHER_MONGODB_DATABASE": "db"}, config_path=to_mongo))
