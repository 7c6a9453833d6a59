"""What a handler contributes besides its runs: CLI subcommands and admin-API routes (DESIGN §0).

A handler class (built in, or a plugin of the ``batcher.handlers`` entry-point group) lists them in
``Handler.cli_commands`` and ``Handler.api_routes``; :mod:`batcher.cli` and :mod:`batcher.api` discover
them from the registry. Everything here is plain data and protocols, so a handler needs nothing but the
public ``batcher`` API: it never imports aiohttp, the runtime's modules or argparse beyond the parser it
is handed.

- :class:`CliCommand`: ``batcher NAME …``. ``add_arguments`` fills its (stdlib argparse) parser;
  ``run(args, ctx)`` returns the exit code. A :class:`~batcher.errors.ConfigError` is exit 2 with its
  message, any other :class:`~batcher.errors.BatcherError` exit 1. Through ``ctx.services(…)`` it gets the
  pool, Redis, the stored jobs of a type and foreground runs (:class:`CommandServices`).
- :class:`ApiRoute`: one admin-API operation. ``handle(request)`` gets an :class:`ApiRequest` (path
  parameters, query, the JSON object body when ``body`` is set, the pool) and returns an
  :class:`ApiResponse` (JSON and status) or raises :class:`ApiRouteError` (the API's error envelope).
  ``openapi`` is its OpenAPI 3.1 operation object (summary, parameters, requestBody, 200 response); the
  runtime adds operationId, security and the error responses. ``mutating`` routes need the bearer token.
"""

from __future__ import annotations

import argparse
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from batcher.errors import BatcherError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_NAME = 200  # job names, streams, merchants, apps (as the admin API's names)


def shown(text: str) -> str:
    """A bad value in a one-line message: repr'd (control characters escaped), long ones shortened."""
    return repr(text if len(text) <= 40 else text[:40] + "…")


def bad_text(text: str) -> str | None:
    """Why ``text`` cannot be stored or shown as one line: a control character or invalid Unicode."""
    if any(unicodedata.category(c) == "Cc" for c in text):
        return "must not contain control characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


def name_arg(text: str) -> str:
    """argparse type for a name argument (job, stream, merchant, app): 1..200 characters, no control
    characters, valid Unicode — a bad one is a usage error (exit 2) naming the problem."""
    problem = "must not be empty" if not text.strip() else (
        f"is longer than {MAX_NAME} characters" if len(text) > MAX_NAME else bad_text(text))
    if problem:
        raise argparse.ArgumentTypeError(f"{shown(text)} {problem}")
    return text


class CommandServices(Protocol):
    """The open services of a handler's command (closed when its ``ctx.services()`` block ends)."""

    #: An asyncpg pool (the handler's own tables and reads of the runtime's).
    pool: Any
    redis_url: str

    def redis_client(self, *, socket_timeout: float = 30.0) -> Any:
        """A new redis.asyncio client; the caller closes it (``await client.aclose()``)."""

    async def stored_jobs(self, job_type: str, wanted: str | None = None, *, strict: bool = True,
                          ) -> dict[str, dict[str, Any]]:
        """Jobs of ``job_type`` in batch_config (not ad-hoc, not orphaned): name → params. A job of that
        type that is only in the caller's batcher.toml (``wanted``, or any when none is stored) is a
        ConfigError naming ``batcher jobs sync`` (unless ``strict`` is False)."""

    async def run_job(self, job: str, params: Mapping[str, Any], *, wait: bool = True) -> dict[str, Any]:
        """One foreground run of a configured job, as ``batcher run-job``: its summary. A busy job with
        ``wait=False`` raises BatcherError (exit 1)."""


class CommandContext(Protocol):
    """What a handler's CLI command may use."""

    def services(self, *, start_embedded: bool = False, schema: Literal["migrate", "check"] = "check",
                 http: bool = False) -> AbstractAsyncContextManager[CommandServices]:
        """Open PostgreSQL and Redis (embedded servers started when ``start_embedded`` and no URL is set),
        migrating or checking the schema; ``http`` also starts the HTTP runtime for runs that need it."""

    def print_json(self, value: Any) -> None:
        """One JSON line on stdout (the commands' summary convention)."""


@dataclass(frozen=True)
class CliCommand:
    """A ``batcher`` subcommand contributed by a handler."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, CommandContext], Awaitable[int]]


@dataclass(frozen=True)
class ApiRequest:
    """A request to a handler's route, already authorized; ``body`` is the parsed JSON object (or None)."""

    method: str
    path_params: Mapping[str, str]
    query: Mapping[str, str]
    body: Mapping[str, Any] | None
    pool: Any


@dataclass(frozen=True)
class ApiResponse:
    """A JSON answer."""

    body: Any
    status: int = 200


class ApiRouteError(BatcherError):
    """An error answer of a handler's route: ``{"success": false, "error": {code, message, field?}}``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


@dataclass(frozen=True)
class ApiRoute:
    """One admin-API operation contributed by a handler."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    operation_id: str
    handle: Callable[[ApiRequest], Awaitable[ApiResponse]]
    openapi: Mapping[str, Any] = field(default_factory=dict)
    mutating: bool = False
    body: bool = False
