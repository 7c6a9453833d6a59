"""The handler-author contract (DESIGN §6): Handler, Stream, Batch, Rejected, RunContext, Secret, RateLimit.

A handler is a class that turns an upstream system into a stream of :class:`Batch` objects. It never
writes to storage, never commits cursors and never sleeps for rate limits: the runtime does that.

Records are tuples whose items follow ``Stream.columns`` (key columns, then value columns). Bookkeeping
columns (``ingested_at``…) are set by the sink, never by the handler.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

if TYPE_CHECKING:
    import structlog

    from batcher.extension import ApiRoute, CliCommand
    from batcher.oauth import OAuth2Credentials


class _SecretMarker:
    """Metadata marking a Params field as secret: persisted only as a ``<name>_env`` reference."""

    def __repr__(self) -> str:
        return "Secret"


SECRET_MARKER = _SecretMarker()

#: Type of a secret handler param. Persisted config holds ``<field>_env = "VARIABLE"`` instead of the
#: value; :mod:`batcher.environ` resolves it when a run starts.
Secret = Annotated[SecretStr, SECRET_MARKER]

ConflictPolicy = Literal["ignore", "update_if_changed", "update"]
CheckpointScope = Literal["job", "run"]


class NoCheckpoint:
    """Sentinel type: the batch does not move its stream's checkpoint."""

    _instance: ClassVar[NoCheckpoint | None] = None

    def __new__(cls) -> NoCheckpoint:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_CHECKPOINT"


NO_CHECKPOINT = NoCheckpoint()


@dataclass(frozen=True)
class Stream:
    """Where a handler's records go and how they are merged and checkpointed.

    ``table`` is a PostgreSQL table, or with ``sink == "mongo"`` a MongoDB collection (documents keyed by
    the key columns, see :mod:`batcher.sinks.mongo`); a job's ``sink`` setting overrides ``sink``. Records are tuples
    in ``columns`` order. ``bookkeeping_columns`` are set to ``now()`` on write and never compared.
    ``json_columns`` names value columns of type jsonb (the sink encodes them). ``parse_raw`` turns a
    dead letter's raw text back into a record (used by ``dead-letters replay``); it raises ``ValueError``
    with a reason when the payload is still invalid.
    """

    name: str
    table: str
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    conflict: ConflictPolicy = "ignore"
    scope: CheckpointScope = "job"
    bookkeeping_columns: tuple[str, ...] = ()
    json_columns: tuple[str, ...] = ()
    sink: Literal["postgres", "mongo"] = "postgres"
    parse_raw: Callable[[str], tuple[Any, ...]] | None = None
    #: Add the rows the sink inserted or changed to the run's ``items_updated`` (with ``update_if_changed``
    #: a record re-read unchanged does not count): for handlers that cannot know what changed upstream.
    count_written_as_updated: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        return self.key_columns + self.value_columns


@dataclass(frozen=True)
class Rejected:
    """A record the handler could not validate: kept raw (any JSON value or text) with the reason."""

    raw: Any
    reason: str


@dataclass
class Batch:
    """One unit of work for the pipeline: records, rejects, an optional new checkpoint and counters."""

    stream: str
    records: Sequence[tuple[Any, ...]] = ()
    rejected: Sequence[Rejected] = ()
    checkpoint: Any = NO_CHECKPOINT
    items_checked: int = 0
    items_updated: int = 0
    progress_total: int | None = None
    size_bytes: int = 0  # approximate payload size, for the pipeline's byte bound (0: estimated)
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Key-column values (``{"site": s, "date": d}``): every existing row of the stream matching all of
    #: them is deleted in the batch's transaction before its records are written, so the batch replaces
    #: that slice exactly (rows that vanished upstream go too). A replay deletes and writes it again.
    replace_scope: Mapping[str, Any] | None = None
    #: Top-level keys merged into the run's ``result`` (jsonb) in the batch's transaction, last value wins:
    #: facts a user should see on the run (e.g. a day that hit the upstream's row cap).
    run_result: Mapping[str, Any] | None = None

    @property
    def moves_checkpoint(self) -> bool:
        return self.checkpoint is not NO_CHECKPOINT


class RateLimit(BaseModel):
    """How fast one rate-limit namespace may send (DESIGN §8): a handler's default
    (:attr:`Handler.default_rate_limits`) or a ``[rate_limits."ns:"]`` entry of the TOML (the same keys),
    which replaces the default for that namespace whole.

    Requests are spaced by the emission interval ``max(interval_ms / max_in_interval, min_spacing_ms)``
    across every process sharing a Redis; with ``burst = 1`` no window of ``interval_ms`` ever holds more
    than ``max_in_interval`` requests, a larger ``burst`` lets that many go back to back after a quiet
    spell. A namespace (``"provider:endpoint:"``) covers every namespace it is a prefix of, so
    ``"crm:api:account-42"`` (a credential discriminator) is paced by a ``"crm:api:"`` entry but keeps
    its own state; the longest matching prefix wins, and a namespace nothing matches is unlimited.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The window, in milliseconds.
    interval_ms: int = Field(1000, ge=1)
    #: Requests allowed in one window.
    max_in_interval: int = Field(1, ge=1)
    #: Requests that may go back to back (1: evenly spaced).
    burst: int = Field(1, ge=1)
    #: A floor under the spacing of two requests, in milliseconds.
    min_spacing_ms: int = Field(0, ge=0)
    #: HTTP attempts per request for 5xx answers, timeouts and resets.
    max_attempts: int = Field(5, ge=1, le=50)
    #: Pause after a quota-exhausted answer (Google's 403 ``quotaExceeded``) naming no retry time; 0: the
    #: runtime's default pause (1 s), as for any other rate-limit answer.
    quota_pause_ms: int = Field(0, ge=0)


class HttpReply(Protocol):
    """A finished 2xx/3xx response (implemented by batcher.responses.HttpResponse)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> bytes: ...

    def json(self) -> Any:
        """The body parsed as JSON (None when empty)."""


class HttpClient(Protocol):
    """The rate-limited, retrying HTTP client bound to one namespace (implemented by batcher.http)."""

    async def get_json(self, url: str, *, params: Mapping[str, str] | None = None,
                       headers: Mapping[str, str] | None = None,
                       validate: Callable[[Any], Any] | None = None, raw_body: bool = False,
                       on_throttled: Callable[[Any], float | None] | None = None) -> Any:
        """GET and parse JSON. ``validate`` (given the parsed body, or the raw bytes with ``raw_body``)
        returns the value to hand back; a ValueError from it counts as a failed attempt and the page is
        fetched again under the namespace's retry policy. ``on_throttled`` is given each 429 response
        (``status``, ``headers``, ``body``, ``json()``) before the pause: it may raise (a quota no pause
        fixes ends the request) or return the pause in seconds to use when the response names none."""

    async def request_json(self, method: str, url: str, *, idempotent: bool = False,
                           params: Mapping[str, str] | None = None, json: Any = None,
                           headers: Mapping[str, str] | None = None,
                           on_throttled: Callable[[Any], float | None] | None = None) -> Any: ...

    async def request(self, method: str, url: str, *, idempotent: bool = False,
                      params: Mapping[str, str] | None = None, json: Any = None, data: Any = None,
                      headers: Mapping[str, str] | None = None,
                      free_not_modified: bool = False) -> HttpReply:
        """The answer itself (2xx/3xx: status, headers, body) for handlers that need more than the JSON,
        e.g. a conditional request's 304 and ETag. ``free_not_modified``: a 304 gives its rate-limit
        admission back (only where the upstream does not count it)."""


class RunContext(Protocol):
    """What a running handler may use. Provided by the runner; handlers never build one."""

    run_id: int
    root_run_id: int
    job_name: str
    attempt: int
    trigger: str
    trigger_params: Mapping[str, Any]
    log: structlog.typing.FilteringBoundLogger
    cancelled: asyncio.Event

    def checkpoint(self, stream: str) -> Any | None:
        """The last committed cursor of ``stream`` in this run's scope, or None."""

    def http(self, namespace: str, *, oauth: OAuth2Credentials | None = None) -> HttpClient:
        """The shared HTTP client bound to a rate-limit namespace such as ``"datasync:events:"``.

        With ``oauth``, every request carries ``Authorization: Bearer <access token>`` of that credential:
        one token provider per credential per process (shared by concurrent runs), refreshed shortly
        before it expires and once after a 401; a refresh answered ``invalid_grant`` fails the run
        permanently with ``oauth.invalid_grant_message``. Secrets and tokens are never logged."""

    def report_progress(self, *, done: int | None = None, total: int | None = None) -> None:
        """Publish progress (shown by the API and dashboard); committed with the next batch."""

    def report_result(self, values: Mapping[str, Any]) -> None:
        """Merge ``values`` (JSON) into the run's ``result`` (API, dashboard), written when the run ends."""

    @property
    def postgres(self) -> Any:
        """Read access to PostgreSQL (an asyncpg pool) for handlers whose source is there."""

    @property
    def redis(self) -> Any:
        """A redis.asyncio client for handlers whose source is Redis."""


@dataclass(frozen=True)
class DerivedJob:
    """A job a handler maintains itself, derived from one of its configured jobs (the parent).

    The runtime names it ``{parent}@{key}``, stores it with ``source = 'derived'``, copies the parent's
    queue, priority, retry, timeout, overlap and pause settings, and schedules it like any job (exactly
    one of ``cron`` or ``interval_minutes``). A derived job the handler no longer returns is disabled and
    marked orphaned (its history stays); returned again, it is enabled again.
    """

    key: str
    params: Mapping[str, Any]
    cron: str | None = None
    interval_minutes: int | None = None
    timezone: str = "UTC"
    every_weeks: int = 1  # cron only: fire in every N-th week counted from ``anchor``'s week
    anchor: datetime.datetime | None = None


class HandlerParams(BaseModel):
    """Base class of every handler's Params model: unknown keys are rejected, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Handler(ABC):
    """Base class of every job type. Subclasses set the class attributes and implement :meth:`run`."""

    type: ClassVar[str]
    display_name: ClassVar[str]
    Params: ClassVar[builtins.type[HandlerParams]]
    streams: ClassVar[tuple[Stream, ...]]
    default_interval_minutes: ClassVar[int | None] = 60
    default_cron: ClassVar[str | None] = None
    #: True when the handler accepts ``start``/``end`` window params (``batcher backfill``).
    accepts_windows: ClassVar[bool] = False
    #: How many batches this handler may produce ahead of the commits (the pipeline's prefetch depth,
    #: 0–1000) when its job does not set ``prefetch_batches``; None: the daemon's ``prefetch_batches``. A
    #: handler that groups whatever its own fetch task has gathered into one batch chooses a small depth:
    #: with 1, while a batch commits the next waits built and what arrives meanwhile goes into the one
    #: after, so batches grow exactly when the database is the slower side; with 0 a batch is built only
    #: once the runner asks for it (nothing built ahead; :mod:`batcher.pipeline`).
    prefetch_batches: ClassVar[int | None] = None
    #: ``batcher`` subcommands and admin-API routes this handler contributes (:mod:`batcher.extension`).
    cli_commands: ClassVar[Sequence[CliCommand]] = ()
    api_routes: ClassVar[Sequence[ApiRoute]] = ()
    #: Namespace prefix → :class:`RateLimit` for the upstreams this handler calls, each number with its
    #: public source in a comment. The registry collects them from every registered handler (two handlers
    #: may declare one namespace only with equal limits); a TOML ``[rate_limits."ns:"]`` entry overrides one.
    default_rate_limits: ClassVar[Mapping[str, RateLimit]] = {}

    @classmethod
    def job_env_overrides(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """Job keys that environment variables set on every job of this type (folded into the file entry
        before hashing, DESIGN §3), from ``environ``; a bad value is a ConfigError. None by default."""
        return {}

    @classmethod
    async def derive_jobs(cls, postgres: Any, parent: str,
                          params: Mapping[str, Any]) -> Sequence[DerivedJob] | None:
        """Jobs derived from the enabled configured job ``parent`` (its persisted ``params``), or None when
        it derives none (the default); a parent that derives jobs is scheduled only through them. Called
        by every scheduler on each tick (and at once after a ``NOTIFY batcher_wakeup``) with read access
        to PostgreSQL; keep it one cheap query."""
        return None

    @classmethod
    def stream(cls, name: str) -> Stream:
        for s in cls.streams:
            if s.name == name:
                return s
        raise KeyError(f"handler {cls.type!r} has no stream {name!r}")

    @abstractmethod
    def run(self, ctx: RunContext, params: Any) -> AsyncIterator[Batch]:
        """Yield batches. Implemented as ``async def run(...)`` with ``yield``."""
