"""The settings tree (DESIGN §3): one frozen pydantic-settings object read once at start-up.

Sources, strongest first: environment (flat names in ``ENV_NAMES``), the TOML file (``BATCHER_CONFIG``,
default ``./batcher.toml``; a missing default file is fine, a missing named file is an error), defaults.
Only this module and :mod:`batcher.environ` read ``os.environ``. An empty environment variable counts as
unset. ``extra="forbid"`` everywhere except job params, which their handler validates.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from batcher.errors import ConfigError
from batcher.handler import RateLimit

DEFAULT_CONFIG_PATH = "batcher.toml"

#: Flat environment names per settings path, strongest first (DESIGN §3 table).
ENV_NAMES: dict[tuple[str, str], tuple[str, ...]] = {
    ("database", "url"): ("BATCHER_DATABASE_URL", "DATABASE_URL"),
    ("database", "pool_size"): ("BATCHER_DATABASE_POOL_SIZE",),
    ("redis", "url"): ("BATCHER_REDIS_URL", "REDIS_URL"),
    ("mongo", "uri"): ("BATCHER_MONGODB_URI", "MONGODB_URI"),
    ("mongo", "params"): ("MONGODB_PARAMS",),
    ("mongo", "database"): ("BATCHER_MONGODB_DATABASE",),
    ("mongo", "history"): ("BATCHER_MONGODB_HISTORY",),
    ("daemon", "data_dir"): ("BATCHER_DATA_DIR",),
    ("daemon", "concurrency"): ("BATCHER_CONCURRENCY",),
    ("daemon", "queues"): ("BATCHER_QUEUES",),
    ("daemon", "tick_seconds"): ("BATCHER_TICK_SECONDS",),
    ("daemon", "lease_seconds"): ("BATCHER_LEASE_SECONDS",),
    ("daemon", "shutdown_grace_seconds"): ("BATCHER_SHUTDOWN_GRACE",),
    ("daemon", "runs_retention_days"): ("BATCHER_RUNS_RETENTION_DAYS",),
    ("daemon", "aging_per_minute"): ("BATCHER_AGING_PER_MINUTE",),
    ("daemon", "prefetch_batches"): ("BATCHER_PREFETCH_BATCHES",),
    ("daemon", "prefetch_bytes"): ("BATCHER_PREFETCH_BYTES",),
    ("api", "host"): ("BATCHER_API_HOST",),
    ("api", "port"): ("BATCHER_API_PORT",),
    ("api", "token"): ("BATCHER_API_TOKEN",),
    ("api", "max_body_bytes"): ("BATCHER_API_MAX_BODY_BYTES",),
    ("log", "format"): ("BATCHER_LOG_FORMAT",),
    ("log", "level"): ("BATCHER_LOG_LEVEL",),
}
ENV_ONLY = {("api", "token")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str | None = None  # None: embedded PostgreSQL in the data dir
    pool_size: int = Field(10, ge=2, le=200)


class RedisSettings(_Section):
    url: str | None = None  # None: embedded redis-server in the data dir


class MongoSettings(_Section):
    uri: str | None = None
    params: str | None = None  # URI query options appended to the URI
    database: str | None = None  # None: the URI's database (mongodb://host/DATABASE)
    history: bool = False  # mirror every finished run into the `jobhistories` collection


class DaemonSettings(_Section):
    data_dir: Path = Path(".batcher")
    concurrency: int = Field(4, ge=1, le=1000)
    queues: Annotated[tuple[str, ...] | None, NoDecode] = None  # None: every queue
    tick_seconds: float = Field(1.0, gt=0, le=60)
    lease_seconds: float = Field(60.0, ge=1)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    runs_retention_days: int = Field(30, ge=1)
    aging_per_minute: float = Field(1.0, ge=0)
    prefetch_batches: int = Field(2, ge=1, le=1000)
    prefetch_bytes: int = Field(64 * 1024 * 1024, ge=1024)

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = tuple(p.strip() for p in value.split(",") if p.strip())
            return parts or None
        return value


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)  # 0: API off
    token: str | None = Field(None, repr=False)  # environment only; None: the API is read-only
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024)  # larger request bodies: 413


class LogSettings(_Section):
    format: Literal["json", "console"] | None = None  # None: console on a TTY, else json
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


#: A ``[rate_limits."ns:"]`` entry: the public :class:`batcher.RateLimit`, the type handlers declare their
#: defaults with (``Handler.default_rate_limits``), so an entry replaces a default whole.
RateLimitSettings = RateLimit


class Settings(BaseSettings):
    """Everything batcher reads at start-up. Jobs stay raw here; :mod:`batcher.jobs` validates them."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    mongo: MongoSettings = MongoSettings()
    daemon: DaemonSettings = DaemonSettings()
    api: ApiSettings = ApiSettings()
    log: LogSettings = LogSettings()
    rate_limits: dict[str, RateLimitSettings] = Field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    config_path: Path | None = None  # the TOML file actually read (None: none); set by load_settings only
    job_env_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)  # set by load_settings only

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _FlatEnvSource(PydanticBaseSettingsSource):
    """Maps the flat environment names of ``ENV_NAMES`` onto the nested tree."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        tree: dict[str, dict[str, Any]] = {}
        for (section, key), names in ENV_NAMES.items():
            for name in names:
                value = self._environ.get(name)
                if value is not None and value.strip() != "":
                    tree.setdefault(section, {})[key] = value.strip()
                    break
        return tree


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax errors into a ConfigError naming the file and position."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start}): TOML files are UTF-8", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=str(path)) from None


def config_path_from(environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The TOML path and whether it was named explicitly (a named file must exist)."""
    named = environ.get("BATCHER_CONFIG", "").strip()
    return (Path(named), True) if named else (Path(DEFAULT_CONFIG_PATH), False)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_env_only(data: Mapping[str, Any], path: Path) -> None:
    for key in ("config_path", "job_env_overrides"):
        if key in data:
            raise ConfigError("unknown key", file=str(path), key=key)
    for section, key in ENV_ONLY:
        if isinstance(data.get(section), Mapping) and key in data[section]:
            raise ConfigError(f"{section}.{key} may only be set in the environment "
                              f"({ENV_NAMES[(section, key)][0]})", file=str(path), key=f"{section}.{key}")


def load_settings(environ: Mapping[str, str] | None = None, config_path: Path | None = None) -> Settings:
    """Read the settings from the environment, the TOML file and the defaults, once.

    ``environ`` defaults to ``os.environ``; ``config_path`` overrides ``BATCHER_CONFIG``.
    Raises :class:`ConfigError` (CLI exit 2) naming the file, job, key and reason.
    """
    env = os.environ if environ is None else environ
    path, named = (config_path, True) if config_path is not None else config_path_from(env)
    file_data: dict[str, Any] = {}
    if path.exists():
        file_data = read_toml(path)
        _check_env_only(file_data, path)
    elif named:
        raise ConfigError("the configuration file does not exist", file=str(path))
    env_data = _FlatEnvSource(Settings, env)()
    merged = _deep_merge(file_data, env_data)
    merged["config_path"] = path if path.exists() else None
    if isinstance(merged.get("jobs"), Mapping):
        merged["jobs"], merged["job_env_overrides"] = fold_job_env_aliases(merged["jobs"], env)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise _config_error_from(exc, path, env_data, env) from None


def fold_job_env_aliases(jobs: Mapping[str, Any], environ: Mapping[str, str],
                         registry: Mapping[str, Any] | None = None,
                         ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Environment variables that set job keys, as each handler declares them
    (``Handler.job_env_overrides``, e.g. the usage aggregation's original names): folded into every job
    of that type before hashing (DESIGN §3), so changing them counts as a file change (an API edit wins
    until then); an ``interval_minutes`` override drops ``cron``. Returns the jobs and, per job changed,
    the keys set (``job_env_overrides``). A bad value is a ConfigError even with no job of that type."""
    if registry is None:
        from batcher.registry import load_registry

        registry = load_registry()
    by_type = {job_type: o for job_type, cls in registry.items() if (o := cls.job_env_overrides(environ))}
    out, applied = dict(jobs), {}
    for name, entry in jobs.items():
        overrides = by_type.get(str(entry.get("type"))) if isinstance(entry, Mapping) else None
        if overrides:
            merged = {k: v for k, v in entry.items() if not ("interval_minutes" in overrides and k == "cron")}
            out[name] = {**merged, **overrides}
            applied[name] = dict(overrides)
    return out, applied


def _env_name_for(loc: list[str], env_data: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """The environment variable that supplied the value at ``loc``, if one did."""
    if len(loc) < 2 or loc[1] not in env_data.get(loc[0], {}):
        return None
    return next((n for n in ENV_NAMES.get((loc[0], loc[1]), ()) if env.get(n, "").strip()), None)


def _config_error_from(exc: ValidationError, path: Path, env_data: Mapping[str, Any],
                       env: Mapping[str, str]) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    env_name = _env_name_for(loc, env_data, env)
    if env_name is not None:
        return ConfigError(f"{err['msg']} (from the environment)", file=env_name, key=".".join(loc))
    job = loc[1] if len(loc) > 1 and loc[0] == "jobs" else None
    key = ".".join(loc[2:] if job is not None else loc) or None
    if err["type"] == "extra_forbidden":
        return ConfigError("unknown key", file=str(path), job=job, key=key)
    return ConfigError(err["msg"], file=str(path), job=job, key=key)


def systemd_environment(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(NOTIFY_SOCKET, WATCHDOG_USEC) as systemd set them for this process."""
    env = os.environ if environ is None else environ
    return env.get("NOTIFY_SOCKET"), env.get("WATCHDOG_USEC")


def process_environment() -> dict[str, str]:
    """A copy of this process's environment, for launchers that start child processes (``batcher.demo``)."""
    return dict(os.environ)


def debug_enabled() -> bool:
    """``BATCHER_DEBUG`` set: the CLI lets an unexpected error's traceback through."""
    return bool(os.environ.get("BATCHER_DEBUG"))
