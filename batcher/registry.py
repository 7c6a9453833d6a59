"""The handler registry: built-in handlers (``handlers.BUILTIN_HANDLERS``) plus the ``batcher.handlers``
entry-point group, where third-party packages add theirs (``name = "package.module:HandlerClass"``)."""

from __future__ import annotations

from importlib.metadata import entry_points

from batcher.errors import ConfigError
from batcher.handler import Handler


def load_registry() -> dict[str, type[Handler]]:
    """Job type name → handler class. A plugin that does not load, or clashes, is a ConfigError."""
    from handlers import BUILTIN_HANDLERS

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
        registry[cls.type] = cls
    return registry
