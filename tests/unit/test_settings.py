"""Tests of batcher.settings against DESIGN §3: every row of the settings table, and the file rules.

Each row is checked three ways: the default when neither the environment nor the TOML file sets it, the
TOML value over the default, and each environment name over the TOML value (for rows with two names,
the first name also wins over the second). Expected defaults are copied from the DESIGN table, not
from the settings model, so a drifting default fails here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batcher.errors import ConfigError
from batcher.settings import Settings, load_settings


@dataclass(frozen=True)
class Row:
    """One row of the DESIGN §3 table: where it lives, its names, and sample values with their results."""

    path: str  # "section.key"
    env: tuple[str, ...]  # strongest first
    default: Any
    toml_value: Any  # as written in TOML
    toml_expected: Any
    env_values: tuple[str, ...]  # one per name in ``env``, as written in the environment
    env_expected: tuple[Any, ...]


MIB = 1024 * 1024
ROWS = [
    Row("database.url", ("BATCHER_DATABASE_URL", "DATABASE_URL"), None, "postgresql://toml/db",
        "postgresql://toml/db", ("postgresql://env1/db", "postgresql://env2/db"),
        ("postgresql://env1/db", "postgresql://env2/db")),
    Row("database.pool_size", ("BATCHER_DATABASE_POOL_SIZE",), 10, 20, 20, ("30",), (30,)),
    Row("redis.url", ("BATCHER_REDIS_URL", "REDIS_URL"), None, "redis://toml:6379/0", "redis://toml:6379/0",
        ("redis://env1:6379/0", "redis://env2:6379/0"), ("redis://env1:6379/0", "redis://env2:6379/0")),
    Row("mongo.uri", ("BATCHER_MONGODB_URI", "MONGODB_URI"), None, "mongodb://toml/db", "mongodb://toml/db",
        ("mongodb://env1/db", "mongodb://env2/db"), ("mongodb://env1/db", "mongodb://env2/db")),
    Row("mongo.params", ("MONGODB_PARAMS",), None, "w=1", "w=1",
        ("retryWrites=false",), ("retryWrites=false",)),
    Row("mongo.database", ("BATCHER_MONGODB_DATABASE",), None, "ingest", "ingest", ("history",), ("history",)),
    Row("mongo.history", ("BATCHER_MONGODB_HISTORY",), False, True, True, ("false",), (False,)),
    Row("daemon.data_dir", ("BATCHER_DATA_DIR",), Path(".batcher"), "/srv/toml", Path("/srv/toml"),
        ("/srv/env",), (Path("/srv/env"),)),
    Row("daemon.concurrency", ("BATCHER_CONCURRENCY",), 4, 8, 8, ("16",), (16,)),
    Row("daemon.queues", ("BATCHER_QUEUES",), None, ["default", "bulk"], ("default", "bulk"),
        ("fast, slow",), (("fast", "slow"),)),
    Row("daemon.tick_seconds", ("BATCHER_TICK_SECONDS",), 1.0, 2.5, 2.5, ("0.5",), (0.5,)),
    Row("daemon.lease_seconds", ("BATCHER_LEASE_SECONDS",), 60, 90, 90, ("120",), (120,)),
    Row("daemon.shutdown_grace_seconds", ("BATCHER_SHUTDOWN_GRACE",), 30, 10, 10, ("45",), (45,)),
    Row("daemon.runs_retention_days", ("BATCHER_RUNS_RETENTION_DAYS",), 30, 7, 7, ("90",), (90,)),
    Row("daemon.aging_per_minute", ("BATCHER_AGING_PER_MINUTE",), 1, 2, 2, ("0.5",), (0.5,)),
    Row("daemon.prefetch_batches", ("BATCHER_PREFETCH_BATCHES",), 2, 4, 4, ("8",), (8,)),
    Row("daemon.prefetch_bytes", ("BATCHER_PREFETCH_BYTES",), 64 * MIB, 32 * MIB, 32 * MIB,
        (str(128 * MIB),), (128 * MIB,)),
    Row("api.host", ("BATCHER_API_HOST",), "127.0.0.1", "0.0.0.0", "0.0.0.0", ("::1",), ("::1",)),
    Row("api.port", ("BATCHER_API_PORT",), 8080, 9090, 9090, ("0",), (0,)),
    Row("api.max_body_bytes", ("BATCHER_API_MAX_BODY_BYTES",), 65536, 1048576, 1048576, ("4096",), (4096,)),
    Row("log.format", ("BATCHER_LOG_FORMAT",), None, "console", "console", ("json",), ("json",)),
    Row("log.level", ("BATCHER_LOG_LEVEL",), "info", "warning", "warning", ("DEBUG",), ("debug",)),
]


def row_id(row: Row) -> str:
    return row.path


def toml_text(path: str, value: Any) -> str:
    """A TOML document setting ``section.key`` (JSON scalars and string lists are valid TOML)."""
    section, key = path.split(".")
    return f"[{section}]\n{key} = {json.dumps(value)}\n"


def write(tmp_path: Path, text: str, name: str = "batcher.toml") -> Path:
    file = tmp_path / name
    file.write_text(text, encoding="utf-8")
    return file


def value_at(settings: Settings, path: str) -> Any:
    section, key = path.split(".")
    return getattr(getattr(settings, section), key)


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_default_applies_when_neither_environment_nor_toml_sets_it(tmp_path: Path, row: Row) -> None:
    """With an empty TOML file and no environment, the row has its DESIGN default."""
    settings = load_settings(environ={}, config_path=write(tmp_path, ""))
    assert value_at(settings, row.path) == row.default


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_toml_overrides_the_default(tmp_path: Path, row: Row) -> None:
    """A value in the TOML file replaces the default."""
    settings = load_settings(environ={}, config_path=write(tmp_path, toml_text(row.path, row.toml_value)))
    assert value_at(settings, row.path) == row.toml_expected


@pytest.mark.parametrize(("row", "index"), [(row, i) for row in ROWS for i in range(len(row.env))],
                         ids=[f"{row.path}-{name}" for row in ROWS for name in row.env])
def test_each_environment_name_overrides_toml(tmp_path: Path, row: Row, index: int) -> None:
    """Each environment name of the row, set alone, beats the TOML value."""
    config = write(tmp_path, toml_text(row.path, row.toml_value))
    settings = load_settings(environ={row.env[index]: row.env_values[index]}, config_path=config)
    assert value_at(settings, row.path) == row.env_expected[index]


@pytest.mark.parametrize("row", [row for row in ROWS if len(row.env) == 2], ids=row_id)
def test_first_environment_name_beats_the_second(tmp_path: Path, row: Row) -> None:
    """For rows with two environment names, the BATCHER_ one wins over the conventional one."""
    config = write(tmp_path, toml_text(row.path, row.toml_value))
    settings = load_settings(environ=dict(zip(row.env, row.env_values, strict=True)), config_path=config)
    assert value_at(settings, row.path) == row.env_expected[0]


def test_every_design_row_is_covered() -> None:
    """The table above lists every settings section key of DESIGN §3 (api.token is tested separately)."""
    covered = {row.path for row in ROWS} | {"api.token"}
    model = {f"{section}.{key}" for section in ("database", "redis", "mongo", "daemon", "api", "log")
             for key in type(getattr(Settings(), section)).model_fields}
    assert covered == model


def test_api_token_comes_from_the_environment_only(tmp_path: Path) -> None:
    """BATCHER_API_TOKEN sets api.token; absent, the token is None (the API is read-only)."""
    config = write(tmp_path, "")
    assert load_settings(environ={}, config_path=config).api.token is None
    settings = load_settings(environ={"BATCHER_API_TOKEN": "t0ken"}, config_path=config)
    assert settings.api.token == "t0ken"
    assert "t0ken" not in repr(settings)


def test_api_token_in_toml_is_rejected(tmp_path: Path) -> None:
    """A token written in the TOML file is refused with an error naming the file and the key."""
    config = write(tmp_path, '[api]\ntoken = "literal"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}, config_path=config)
    assert err.value.key == "api.token"
    assert err.value.file == str(config)
    assert "literal" not in str(err.value)


def test_named_config_file_must_exist(tmp_path: Path) -> None:
    """BATCHER_CONFIG naming a missing file is a ConfigError naming that file."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"BATCHER_CONFIG": str(missing)})
    assert err.value.file == str(missing)
    with pytest.raises(ConfigError):
        load_settings(environ={}, config_path=missing)


def test_named_config_file_is_read(tmp_path: Path) -> None:
    """BATCHER_CONFIG points at the TOML file to read, and settings record which file was read."""
    config = write(tmp_path, "[daemon]\nconcurrency = 9\n", name="custom.toml")
    settings = load_settings(environ={"BATCHER_CONFIG": str(config)})
    assert settings.daemon.concurrency == 9
    assert settings.config_path == config


def test_missing_default_file_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without BATCHER_CONFIG and without ./batcher.toml, the defaults apply and no file is recorded."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.config_path is None
    assert settings.daemon.concurrency == 4


def test_default_file_is_read_from_the_working_directory(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Without BATCHER_CONFIG, ./batcher.toml is read."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[daemon]\nconcurrency = 5\n")
    assert load_settings(environ={}).daemon.concurrency == 5


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    """A file that is not valid TOML is a ConfigError naming the file."""
    config = write(tmp_path, "[daemon\nconcurrency = \n")
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}, config_path=config)
    assert err.value.file == str(config)
    assert str(config) in str(err.value)
    assert "TOML" in str(err.value)


@pytest.mark.parametrize(("text", "key"), [
    ("[daemon]\nconcurency = 3\n", "daemon.concurency"),
    ("[api]\nhost = 'h'\nprot = 1\n", "api.prot"),
    ("[nonsense]\nx = 1\n", "nonsense"),
])
def test_unknown_key_is_a_config_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    """An unknown key or section is rejected (extra="forbid") with the file and the key named."""
    config = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}, config_path=config)
    assert err.value.key == key
    assert err.value.file == str(config)
    assert key in str(err.value)


def test_invalid_value_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    """A value of the wrong type or range, from the file or the environment, names the key."""
    config = write(tmp_path, "[daemon]\nconcurrency = 0\n")
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}, config_path=config)
    assert err.value.key == "daemon.concurrency"
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"BATCHER_API_PORT": "http"}, config_path=write(tmp_path, ""))
    assert err.value.key == "api.port"


@pytest.mark.parametrize(("raw", "expected"), [
    ("default", ("default",)),
    ("a,b", ("a", "b")),
    (" a , b ,, c ", ("a", "b", "c")),
    (" , ", None),
])
def test_batcher_queues_is_comma_separated(tmp_path: Path, raw: str,
                                           expected: tuple[str, ...] | None) -> None:
    """BATCHER_QUEUES is split on commas, blanks dropped (not JSON-decoded); nothing left means all queues."""
    settings = load_settings(environ={"BATCHER_QUEUES": raw}, config_path=write(tmp_path, ""))
    assert settings.daemon.queues == expected


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_environment_variable_counts_as_unset(tmp_path: Path, empty: str) -> None:
    """An empty (or blank) variable neither overrides TOML nor hides the second name of a row."""
    config = write(tmp_path, "[daemon]\nconcurrency = 7\n")
    settings = load_settings(
        environ={"BATCHER_CONCURRENCY": empty, "BATCHER_DATABASE_URL": empty,
                 "DATABASE_URL": "postgresql://second/db", "BATCHER_LOG_FORMAT": empty},
        config_path=config)
    assert settings.daemon.concurrency == 7
    assert settings.database.url == "postgresql://second/db"
    assert settings.log.format is None


def test_settings_are_frozen(tmp_path: Path) -> None:
    """The settings tree cannot be changed after loading (read once, passed down)."""
    settings = load_settings(environ={}, config_path=write(tmp_path, ""))
    with pytest.raises(ValueError, match="frozen"):
        settings.daemon.concurrency = 2  # type: ignore[misc]
