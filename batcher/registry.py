"""The handler registry: built-in handlers (``handlers.BUILTIN_HANDLERS``) plus the ``batcher.handlers``
entry-point group, where third-party packages add theirs (``name = "package.module:HandlerClass"``).

Every handler is checked as it is registered: a stream whose ``sink`` names no sink of this batcher
(``postgres``, ``mongo``), or a ``prefetch_batches`` outside 0–1000, is refused. Whether MongoDB is
configured is checked per job, at config load and at run start (:func:`batcher.jobs.check_job_sinks`,
:func:`batcher.sinks.require_sinks`)."""

from __future__ import annotations

from importlib.metadata import entry_points

from batcher.errors import ConfigError
from batcher.handler import Handler

SUPPORTED_SINKS = ("postgres", "mongo")  # batcher.sinks.SINKS, without importing the sinks here


def check_handler(cls: type[Handler], plugin: str | None = None) -> None:
    """Refuse a handler with a stream no sink of this batcher can write, or a prefetch depth the pipeline
    cannot use (ConfigError → exit 2); the message names the plugin (its entry-point name), the class,
    its job type and the stream."""
    label = f"handler plugin {plugin!r} ({cls.__name__}, job type {cls.type!r})" if plugin else \
        f"handler {cls.__name__} (job type {cls.type!r})"
    for stream in cls.streams:
        if stream.sink not in SUPPORTED_SINKS:
            raise ConfigError(f"{label}: stream {stream.name!r} has unknown sink {stream.sink!r} "
                              f"(known: {', '.join(SUPPORTED_SINKS)})")
    depth = cls.prefetch_batches
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= 1000):
        raise ConfigError(f"{label}: prefetch_batches must be None or an integer from 0 to 1000, not {depth!r}")


def load_registry() -> dict[str, type[Handler]]:
    """Job type name → handler class. A plugin that does not load, clashes, or has a stream with an
    unsupported sink is a ConfigError."""
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
    return registry
