"""The handler registry: built-in handlers (``handlers.BUILTIN_HANDLERS``) plus the ``batcher.handlers``
entry-point group, where third-party packages add theirs (``name = "package.module:HandlerClass"``).

Every handler is checked as it is registered: a stream whose ``sink`` names no sink of this batcher
(``postgres``, ``mongo``) is refused, and so is a ``prefetch_batches`` outside 0–1000 or a
``default_rate_limits`` entry that is not a ``batcher.RateLimit`` under a non-empty namespace. Whether
MongoDB is configured is checked per job, at config load and at run start
(:func:`batcher.jobs.check_job_sinks`, :func:`batcher.sinks.require_sinks`).

The rate limits of the upstreams belong to their handlers too: :func:`handler_rate_limits` collects every
registered handler's ``default_rate_limits`` (the TOML's ``[rate_limits]`` entries override them, in
:mod:`batcher.http`). Two handlers declaring one namespace with different limits is a ConfigError when the
registry loads."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points

from batcher.errors import ConfigError
from batcher.handler import Handler, RateLimit

SUPPORTED_SINKS = ("postgres", "mongo")  # batcher.sinks.SINKS, without importing the sinks here


def _label(cls: type[Handler], plugin: str | None = None) -> str:
    return f"handler plugin {plugin!r} ({cls.__name__}, job type {cls.type!r})" if plugin else \
        f"handler {cls.__name__} (job type {cls.type!r})"


def check_handler(cls: type[Handler], plugin: str | None = None) -> None:
    """Refuse a handler with a stream no sink of this batcher can write, a prefetch depth the pipeline
    cannot use or a malformed ``default_rate_limits`` entry (ConfigError → exit 2); the message names the
    plugin (its entry-point name), the class, its job type and the stream or namespace."""
    label = _label(cls, plugin)
    for stream in cls.streams:
        if stream.sink not in SUPPORTED_SINKS:
            raise ConfigError(f"{label}: stream {stream.name!r} has unknown sink {stream.sink!r} "
                              f"(known: {', '.join(SUPPORTED_SINKS)})")
    depth = cls.prefetch_batches
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= 1000):
        raise ConfigError(f"{label}: prefetch_batches must be None or an integer from 0 to 1000, not {depth!r}")
    for namespace, limit in cls.default_rate_limits.items():
        if not (isinstance(namespace, str) and namespace):
            raise ConfigError(f"{label}: default_rate_limits has a key {namespace!r} that is not a namespace")
        if not isinstance(limit, RateLimit):
            raise ConfigError(f"{label}: default_rate_limits[{namespace!r}] is a {type(limit).__name__}, "
                              "not a batcher.RateLimit")


def handler_rate_limits(registry: Mapping[str, type[Handler]]) -> dict[str, RateLimit]:
    """Namespace → default limit, from every registered handler's ``default_rate_limits``. Two handlers
    may declare one namespace (e.g. a provider both call) only with equal limits; different ones are a
    ConfigError naming the namespace, both handlers and both limits."""
    limits: dict[str, RateLimit] = {}
    owners: dict[str, type[Handler]] = {}
    for cls in registry.values():
        for namespace, limit in cls.default_rate_limits.items():
            first = owners.setdefault(namespace, cls)
            if namespace in limits and limits[namespace] != limit:
                raise ConfigError(
                    f"default rate limit for namespace {namespace!r} declared differently by "
                    f"{_qualified(first)} ({_describe(limits[namespace])}) and {_qualified(cls)} "
                    f"({_describe(limit)}): declare it in one handler, or give both the same limit")
            limits.setdefault(namespace, limit)
    return limits


def _qualified(cls: type[Handler]) -> str:
    return f"handler {cls.__module__}.{cls.__qualname__} (job type {cls.type!r})"


def _describe(limit: RateLimit) -> str:
    return ", ".join(f"{key}={value}" for key, value in limit.model_dump().items())


def load_registry() -> dict[str, type[Handler]]:
    """Job type name → handler class. A plugin that does not load, clashes, has a stream with an
    unsupported sink, or declares a default rate limit that contradicts another handler's is a
    ConfigError."""
    from handlers import BUILTIN_HANDLERS

    for builtin in BUILTIN_HANDLERS.values():
        check_handler(builtin)
    registry = dict(BUILTIN_HANDLERS)
    for ep in entry_points(group="batcher.handlers"):
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is a config problem
            raise ConfigError(f"handler plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Handler)):
            raise ConfigError(f"handler plugin {ep.name!r} ({ep.value}) is not a batcher.Handler subclass")
        if cls.type in registry and registry[cls.type] is not cls:
            raise ConfigError(f"handler plugin {ep.name!r} redefines job type {cls.type!r}")
        check_handler(cls, ep.name)
        registry[cls.type] = cls
    handler_rate_limits(registry)  # a conflict between two handlers' defaults stops the load
    return registry
