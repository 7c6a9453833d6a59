"""Job definitions: validation of the ``[jobs.*]`` entries and their sync into ``batch_config``.

A job entry is checked against :class:`JobSpec` (unknown keys rejected), its schedule (interval 1..1440,
standard crontab that fires at all, so not ``0 0 30 2 *``; IANA timezone), its handler type (the
registry), its params (the handler's ``Params`` model, with every ``Secret`` field given only as a
``<name>_env`` reference) and the dependency graph (unknown jobs and cycles rejected). Errors are
:class:`ConfigError` naming file, job, key and reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from batcher.environ import params_for_validation
from batcher.errors import ConfigError
from batcher.handler import Handler
from batcher.jsoncodec import storable_text
from batcher.schedule import Schedule, check_cron, parse_timezone
from batcher.store import Q


class JobSpec(BaseModel):
    """One job as written in the TOML file (or edited through the API). Strict types: a quoted number
    (``interval_minutes = "5"``) or a string for a boolean is an error, not coerced; floats take ints."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: str
    enabled: bool = True
    interval_minutes: int | None = Field(None, ge=1, le=1440)
    cron: str | None = None
    timezone: str = "UTC"
    queue: str = Field("default", min_length=1)
    priority: int = 0
    max_retries: int = Field(3, ge=0, le=100)
    max_abandons: int = Field(5, ge=0, le=100)
    retry_base_seconds: float = Field(60.0, ge=0)
    timeout_seconds: float = Field(1800.0, gt=0)
    overlap: Literal["skip", "queue_one"] = "skip"
    misfire_grace_seconds: float = Field(0.0, ge=0)
    prefetch_batches: int | None = Field(None, ge=1, le=1000)
    depends_on: tuple[str, ...] = Field((), strict=False)  # a TOML/JSON list (its items stay strict str)
    paused: bool = False
    sink: Literal["postgres", "mongo"] | None = None  # None: each stream's own sink (Stream.sink)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_schedule(self) -> JobSpec:
        if self.interval_minutes is not None and self.cron is not None:
            raise ValueError("set either interval_minutes or cron, not both")
        if self.depends_on and (self.interval_minutes is not None or self.cron is not None):
            raise ValueError("a job with depends_on has no schedule of its own")
        return self


def job_hash(entry: Mapping[str, Any]) -> str:
    """A stable hash of a job's file entry: an API edit wins until this changes."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()


def _check_schedule(spec: JobSpec, job: str, file: str | None) -> None:
    try:
        parse_timezone(spec.timezone)
    except ValueError as exc:
        raise ConfigError(str(exc), file=file, job=job, key="timezone") from None
    if spec.cron is not None:
        try:
            check_cron(spec.cron, spec.timezone)
        except ValueError as exc:
            raise ConfigError(str(exc), file=file, job=job, key="cron") from None


def validate_params(handler: type[Handler], params: Mapping[str, Any], *, job: str,
                    file: str | None = None, allow_literal_secrets: bool = False) -> BaseModel:
    """Validate persisted params against the handler's model (secret refs replaced by placeholders)."""
    try:
        candidate = params_for_validation(handler.Params, params, allow_literal_secrets=allow_literal_secrets)
        return handler.Params.model_validate(candidate)
    except ConfigError as exc:
        raise ConfigError(exc.reason, file=file, job=job, key=exc.key) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "params." + ".".join(str(p) for p in err["loc"]) if err["loc"] else "params"
        reason = _reason(err["msg"])
        if err["type"] == "extra_forbidden":
            from batcher.handlertypes import valid_keys

            reason = f"unknown key (valid keys: {', '.join(valid_keys(handler.Params))})"
        raise ConfigError(reason, file=file, job=job, key=key) from None


def _reason(msg: str) -> str:
    """pydantic's message without its "Value error, " prefix (our validators' own sentences)."""
    return msg.removeprefix("Value error, ")


def _entry_rule_key(entry: Mapping[str, Any]) -> str | None:
    """The key a whole-entry rule of JobSpec refers to (pydantic gives those errors no location)."""
    if entry.get("depends_on"):
        return "depends_on"
    return "cron" if "cron" in entry else None


def parse_job(name: str, entry: Mapping[str, Any], registry: Mapping[str, type[Handler]],
              file: str | None = None) -> JobSpec:
    """Validate one job entry completely (except its dependencies, see :func:`check_dependencies`)."""
    try:
        spec = JobSpec.model_validate(dict(entry))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) if err["loc"] else _entry_rule_key(entry)
        reason = "unknown key" if err["type"] == "extra_forbidden" else _reason(err["msg"])
        if not err["loc"] and err["type"] == "string_unicode":  # a key that is not text (a lone surrogate)
            key, reason = storable_text(str(err["input"])), "the key is not valid Unicode text"
        raise ConfigError(reason, file=file, job=name, key=key) from None
    if spec.type not in registry:
        known = ", ".join(sorted(registry))
        raise ConfigError(f"unknown job type {spec.type!r} (known: {known})", file=file, job=name, key="type")
    _check_schedule(spec, name, file)
    validate_params(registry[spec.type], spec.params, job=name, file=file)
    return spec


def check_dependencies(specs: Mapping[str, JobSpec], known: set[str] | None = None,
                       file: str | None = None) -> None:
    """Reject unknown dependencies and cycles."""
    names = set(specs) | (known or set())
    for name, spec in specs.items():
        for dep in spec.depends_on:
            if dep not in names:
                raise ConfigError(f"depends on unknown job {dep!r}", file=file, job=name, key="depends_on")
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in specs[node].depends_on if node in specs else ():
            if state.get(dep) == 1:
                cycle = " -> ".join([*path[path.index(dep):], dep]) if dep in path else dep
                raise ConfigError(f"dependency cycle: {cycle}", file=file, job=node, key="depends_on")
            if state.get(dep) is None:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(specs):
        if state.get(name) is None:
            visit(name, [name])


def parse_jobs(entries: Mapping[str, Mapping[str, Any]], registry: Mapping[str, type[Handler]],
               file: str | None = None) -> dict[str, JobSpec]:
    """Validate every job of the file; the first problem raises ConfigError."""
    specs = {}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping):
            raise ConfigError("a job must be a table", file=file, job=name)
        specs[name] = parse_job(name, entry, registry, file)
    check_dependencies(specs, file=file)
    return specs


def check_job_sinks(specs: Mapping[str, JobSpec], registry: Mapping[str, type[Handler]], *,
                    mongo_configured: bool, file: str | None = None) -> bool:
    """Refuse a job whose streams would go to MongoDB (its ``sink = "mongo"``, or a handler stream's own
    sink when the job sets none) while no MongoDB is configured. Returns whether any job writes there."""
    writes_mongo = False
    for name, spec in specs.items():
        sinks = {spec.sink or s.sink for s in registry[spec.type].streams}
        writes_mongo = writes_mongo or "mongo" in sinks
        if "mongo" in sinks and not mongo_configured:
            origin = "sink = \"mongo\"" if spec.sink else f"job type {spec.type!r} writes to MongoDB"
            raise ConfigError(f"{origin}, but no MongoDB is configured: set MONGODB_URI (or mongo.uri)",
                              file=file, job=name, key="sink")
    return writes_mongo


def _initial_next_run(spec: JobSpec, now: datetime) -> datetime | None:
    """New or changed jobs: interval jobs are due at once (then every N minutes from now); cron jobs at
    their next occurrence; dependent jobs have no schedule."""
    if spec.depends_on:
        return None
    if spec.interval_minutes is not None:
        return now
    if spec.cron is not None:
        return Schedule(None, spec.cron, spec.timezone, now).next_after(now)
    return None


async def sync_jobs(pool: Any, specs: Mapping[str, JobSpec], entries: Mapping[str, Mapping[str, Any]],
                    registry: Mapping[str, type[Handler]]) -> dict[str, list[str]]:
    """Sync the file's jobs into batch_config: an API edit wins until the file's entry changes; jobs
    removed from the file are disabled and marked orphaned. A job with neither schedule nor dependency
    gets its handler's default schedule. Only ``batcher run`` and ``batcher jobs sync`` call this (one-off
    commands never write the file's jobs). Returns what changed: job names ``added``, ``updated``,
    ``orphaned`` and (file jobs left as they were) ``unchanged``."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        before = {r["job_name"]: dict(r) for r in await conn.fetch(Q["list_jobs"])}
        for name, spec in specs.items():
            spec = _with_default_schedule(spec, registry[spec.type])
            await conn.execute(
                Q["upsert_file_job"], name, spec.type, spec.enabled, spec.interval_minutes, spec.cron,
                spec.timezone, spec.params, spec.queue, spec.priority, spec.max_retries, spec.max_abandons,
                spec.retry_base_seconds, spec.timeout_seconds, spec.overlap, spec.misfire_grace_seconds,
                spec.prefetch_batches, list(spec.depends_on), spec.paused, job_hash(entries[name]),
                _initial_next_run(spec, now), now)
            await conn.execute(Q["set_job_sink"], name, spec.sink)
        await conn.execute(Q["orphan_jobs"], list(specs))
        after = {r["job_name"]: dict(r) for r in await conn.fetch(Q["list_jobs"])}
    return _sync_report(before, after, specs)


def _sync_report(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
                 file_jobs: Mapping[str, Any]) -> dict[str, list[str]]:
    """What a sync changed, from batch_config's rows before and after it (names sorted)."""
    orphaned = sorted(n for n, r in after.items() if r["orphaned"] and not before.get(n, {}).get("orphaned"))
    added = sorted(n for n in after if n not in before)
    updated = sorted(n for n in after if n in before and after[n] != before[n] and n not in orphaned)
    unchanged = sorted(n for n in file_jobs if n in before and after[n] == before[n])
    return {"added": added, "updated": updated, "orphaned": orphaned, "unchanged": unchanged}


def not_synced(job: str) -> ConfigError:
    """A one-off command named a job that is in the caller's file but not (yet) in batch_config: one-off
    commands never write the file's jobs (only the daemon and ``batcher jobs sync`` do)."""
    return ConfigError(f"job {job!r} is in batcher.toml but not in the database: start the daemon or run "
                       f"`batcher jobs sync`")


async def require_job_row(pool: Any, file_jobs: Mapping[str, Any], job: str) -> None:
    """Refuse (exit 2) a job of the caller's file that batch_config does not have yet."""
    if job in file_jobs and await pool.fetchrow(Q["get_job"], job) is None:
        raise not_synced(job)


def _with_default_schedule(spec: JobSpec, handler: type[Handler]) -> JobSpec:
    if spec.interval_minutes is not None or spec.cron is not None or spec.depends_on:
        return spec
    if handler.default_cron:
        return spec.model_copy(update={"cron": handler.default_cron})
    return spec.model_copy(update={"interval_minutes": handler.default_interval_minutes or 60})
