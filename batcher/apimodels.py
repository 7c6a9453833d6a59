"""The admin API's wire format: request, query and response models (pydantic), camelCase on the wire.

Owns the shapes the API accepts and returns — the original batch system's envelopes (``{"success": true,
…}`` and ``{"success": false, "error": {"code", "message", "field"?}}``) — and the conversion of database
rows into them. :mod:`batcher.openapi` turns these models into the OpenAPI 3.1 document; :mod:`batcher.api`
validates every request and serializes every response through them, so what it answers matches the
document. Strings that reach PostgreSQL are checked here (no NUL, valid Unicode, bounded length) and
numbers are bounded to what their columns hold, so bad input is a 400, never a database error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
MAX_SECONDS = 10_000_000.0  # ~115 days: bound for the job's second-valued settings
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "skipped")


def checked_text(value: str) -> str:
    """Text PostgreSQL can store: no NUL character, no lone surrogate."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(checked_text)]
Text = Annotated[str, Field(max_length=1000), AfterValidator(checked_text)]
RunId = Annotated[int, Field(ge=1, le=BIGINT_MAX)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown request keys are errors."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class _Out(_Wire):
    """Responses: built from database rows, whose extra columns are dropped (claim tokens never leave)."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------------------------- requests


class JobRef(_Wire):
    """Names a job: ``jobName`` exactly, or ``jobType`` (a job name first, else the one job of that type)."""

    job_type: Name | None = None
    job_name: Name | None = None

    @model_validator(mode="after")
    def _named(self) -> JobRef:
        if self.job_type is None and self.job_name is None:
            raise ValueError("jobType (or jobName) is required")
        return self


class ConfigUpdate(JobRef):
    """``POST /api/batch/config``: the keys to change (absent or null: unchanged). ``params`` merges into
    the job's params key by key; a null value removes that key. Strict types: ``"enabled": "yes"`` or
    ``"intervalMinutes": "5"`` is a 400, not coerced."""

    model_config = ConfigDict(strict=True)

    enabled: bool | None = None
    interval_minutes: Annotated[int, Field(ge=1, le=1440)] | None = None
    cron: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(checked_text)] | None = None
    timezone: Name | None = None
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] | None = None
    queue: Name | None = None
    paused: bool | None = None
    max_retries: Annotated[int, Field(ge=0, le=100)] | None = None
    max_abandons: Annotated[int, Field(ge=0, le=100)] | None = None
    retry_base_seconds: Seconds | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)] | None = None
    overlap: Literal["skip", "queue_one"] | None = None
    misfire_grace_seconds: Seconds | None = None
    prefetch_batches: Annotated[int, Field(ge=1, le=1000)] | None = None
    params: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_schedule(self) -> ConfigUpdate:
        if self.interval_minutes is not None and self.cron is not None:
            raise ValueError("set either intervalMinutes or cron, not both")
        return self


class TriggerRequest(JobRef):
    """``POST /api/batch/trigger``: queue a manual run with these params (merged over the job's)."""

    params: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- queries


class _Query(_Wire):
    """Query strings: unknown parameters are ignored (cache busters and the like)."""

    model_config = ConfigDict(extra="ignore")


class RunsQuery(_Query):
    limit: Annotated[int, Field(ge=1, le=500)] = 20
    job: Name | None = None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "skipped"] | None = None
    since: datetime | None = Field(None, description="only runs queued at or after this time (ISO 8601)")
    cursor: RunId | None = Field(None, description="the nextCursor of the previous page")

    @field_validator("since", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        if value is not None and not (isinstance(value, str) and "-" in value[:8]):
            raise ValueError("must be an ISO 8601 date-time (e.g. 2024-01-01T00:00:00Z)")
        return value

    @field_validator("since")
    @classmethod
    def _aware(cls, since: datetime | None) -> datetime | None:
        if since is None:
            return None
        if since.tzinfo is None:
            raise ValueError("needs a timezone (e.g. 2024-01-01T00:00:00Z)")
        try:
            return since.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range") from None


class LatestQuery(_Query):
    by_job_type: bool = Field(False, description="true: the latest run of every job, keyed by job name")
    job: Name | None = None


class NextQuery(_Query):
    n: Annotated[int, Field(ge=1, le=100)] = 5


class HistoryQuery(_Query):
    runs: Annotated[int, Field(ge=1, le=100)] = 20


class DeadLettersQuery(_Query):
    job: Name | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    include_resolved: bool = False


# -------------------------------------------------------------------------------------------- responses


class ErrorBody(_Out):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(_Out):
    success: Literal[False] = False
    error: ErrorBody


class JobConfig(_Out):
    job_name: str
    job_type: str
    enabled: bool
    interval_minutes: int | None
    cron: str | None
    timezone: str
    priority: int
    queue: str
    paused: bool
    max_retries: int
    max_abandons: int
    retry_base_seconds: float
    timeout_seconds: float
    overlap: str
    misfire_grace_seconds: float
    prefetch_batches: int | None
    depends_on: list[str]
    params: dict[str, Any]
    source: str
    orphaned: bool
    adhoc: bool
    next_run_at: datetime | None
    last_success_at: datetime | None
    updated_at: datetime


class ConfigResponse(_Out):
    success: Literal[True] = True
    config: dict[str, JobConfig]


class ConfigUpdateResponse(_Out):
    success: Literal[True] = True
    config: JobConfig
    message: str


class RunSummary(_Out):
    id: int
    job_name: str
    job_type: str
    trigger: str
    status: str
    reason: str | None
    priority: int
    attempt: int
    abandons: int
    retry_of: int | None
    root_run_id: int | None
    scheduled_for: datetime | None
    queued_at: datetime
    not_before: datetime
    started_at: datetime | None
    finished_at: datetime | None
    runtime_ms: int | None
    records: int
    dead_letters: int
    items_checked: int
    items_updated: int
    api_calls: int
    ingress_bytes: int
    worker_id: str | None
    params: dict[str, Any]
    progress: dict[str, Any]
    errors: list[Any]
    result: Any = None
    cancel_requested: str | None


class RunLog(_Out):
    seq: int
    at: datetime
    level: str
    event: str
    fields: dict[str, Any]


class RunDetail(RunSummary):
    logs: list[RunLog]


class RunsResponse(_Out):
    success: Literal[True] = True
    runs: list[RunSummary]
    next_cursor: int | None = Field(None, description="pass as cursor for the next (older) page; null: last")


class LatestRunResponse(_Out):
    success: Literal[True] = True
    run: RunSummary | None


class LatestRunsByJobResponse(_Out):
    success: Literal[True] = True
    runs: dict[str, RunSummary]


class RunResponse(_Out):
    success: Literal[True] = True
    run: RunDetail


class TriggerResponse(_Out):
    success: Literal[True] = True
    run_id: int
    existing: bool
    message: str


class CancelResponse(_Out):
    success: Literal[True] = True
    run_id: int
    result: Literal["cancelled", "cancel_requested"]
    message: str


class PauseResponse(_Out):
    success: Literal[True] = True
    job: str
    paused: bool
    message: str


class NextResponse(_Out):
    success: Literal[True] = True
    job: str
    enabled: bool
    paused: bool
    next: list[datetime]
    message: str


class DeadLetter(_Out):
    id: int
    job_name: str
    run_id: int | None
    stream: str
    origin: str
    reason: str
    payload: str
    payload_hash: str
    created_at: datetime
    resolved_at: datetime | None


class DeadLettersResponse(_Out):
    success: Literal[True] = True
    dead_letters: list[DeadLetter]


class HandlerParam(_Out):
    """One param of a job type (a secret one is configured as ``<name>_env``)."""

    name: str
    type: str
    required: bool
    default: Any = None
    secret: bool
    bounds: str | None = None
    description: str


class HandlerType(_Out):
    type: str
    display_name: str
    accepts_windows: bool
    params: list[HandlerParam]


class HandlersResponse(_Out):
    success: Literal[True] = True
    handlers: list[HandlerType]


class SchedulerStatus(_Out):
    is_running: bool
    is_initialized: bool
    active_job_timers: int
    last_run_times: dict[str, datetime | None]
    ticks: int


class WorkerInfo(_Out):
    worker_id: str
    host: str
    pid: int
    version: str
    queues: list[str] | None
    started_at: datetime
    heartbeat_at: datetime
    alive: bool


class ThisWorker(_Out):
    worker_id: str
    concurrency: int
    queues: list[str] | None
    active_runs: list[int]


class Status(_Out):
    registered_jobs: list[str]
    running_jobs: list[str]
    scheduler: SchedulerStatus
    worker: ThisWorker | None
    workers: list[WorkerInfo]


class StatusResponse(_Out):
    success: Literal[True] = True
    status: Status


class InfoResponse(_Out):
    success: Literal[True] = True
    version: str
    read_only: bool = Field(description="true: the daemon has no BATCHER_API_TOKEN, every change is refused")
    how_to_allow_changes: str | None = Field(description="what to do about it (null when changes are allowed)")


class RunPoint(_Out):
    """One run that ran, as the dashboard's per-job charts draw it."""

    id: int
    status: str
    reason: str | None
    trigger: str
    started_at: datetime | None
    finished_at: datetime | None
    runtime_ms: int | None
    records: int
    dead_letters: int


class HistoryResponse(_Out):
    success: Literal[True] = True
    history: dict[str, list[RunPoint]] = Field(description="job name → its last runs, newest first")


class HealthResponse(_Out):
    success: bool
    alive: bool
    ticks: int
    seconds_since_tick: float | None


class Check(_Out):
    ok: bool
    reason: str


class ReadyResponse(_Out):
    success: bool
    checks: dict[str, Check]


def dump(model: BaseModel) -> dict[str, Any]:
    """A response model as JSON-ready data, camelCase keys."""
    return model.model_dump(mode="json", by_alias=True)


def job_config(row: Mapping[str, Any]) -> JobConfig:
    return JobConfig.model_validate({**row, "depends_on": list(row["depends_on"] or [])})


def run_summary(row: Mapping[str, Any]) -> RunSummary:
    return RunSummary.model_validate(dict(row))
