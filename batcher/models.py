"""Plain data shared by the runtime modules: the process's services and a run's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

    from batcher.handler import Handler
    from batcher.http import HttpRuntime
    from batcher.settings import Settings
    from batcher.sinks.mongo import MongoConnection


@dataclass
class Services:
    """What the composition root built once: settings, pool, URLs, handler registry, HTTP runtime."""

    settings: Settings
    pool: asyncpg.Pool
    database_url: str
    redis_url: str
    registry: dict[str, type[Handler]]
    http: HttpRuntime | None = None
    redis: Any = None  # redis.asyncio client, created lazily by batcher.connections
    mongo: MongoConnection | None = None  # with MONGODB_URI: the process's client, opened on first use


@dataclass
class RunOutcome:
    """How a run ended, as the runner decided it (written by ``finish``)."""

    status: str  # succeeded | failed | cancelled
    reason: str | None = None
    errors: list[str] = field(default_factory=list)
    retry: bool = False
    retry_delay: float = 0.0
    abandon: bool = False
