"""The ``batcher`` subcommands that handlers contribute (:class:`batcher.extension.CliCommand`).

Owns their discovery from the handler registry (built-ins and ``batcher.handlers`` plugins) and the
runtime side of :class:`~batcher.extension.CommandContext`: settings, services, stored jobs and foreground
runs, built lazily so ``batcher --help`` stays fast. A command whose name clashes with a built-in command
or another handler's is a ConfigError (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

from batcher.cliutil import _print_json
from batcher.errors import BatcherError, ConfigError
from batcher.extension import CliCommand, CommandServices

#: The built-in commands of :mod:`batcher.cli` (a handler may not take their names).
RESERVED = frozenset({"run", "run-job", "trigger", "jobs", "runs", "pause", "resume", "cancel", "backfill",
                      "migrate", "health", "checkpoints", "dead-letters", "types", "help"})



def handler_commands(registry: Mapping[str, Any] | None = None) -> list[CliCommand]:
    """Every handler's commands, in registry order; a name used twice or a built-in's is a ConfigError."""
    if registry is None:
        from batcher.registry import load_registry

        registry = load_registry()
    seen: dict[str, str] = {}
    out: list[CliCommand] = []
    for job_type, cls in registry.items():
        for command in cls.cli_commands:
            owner = seen.get(command.name) or ("batcher" if command.name in RESERVED else None)
            if owner is not None:
                raise ConfigError(f"handler {job_type!r} contributes the command {command.name!r}, which "
                                  f"{'is a built-in command' if owner == 'batcher' else f'{owner!r} has'}")
            seen[command.name] = job_type
            out.append(command)
    return out


def add_handler_commands(sub: Any, registry: Mapping[str, Any] | None = None) -> None:
    """Add each contributed command to ``sub`` (build_parser's subparsers) with its dispatcher."""
    for command in handler_commands(registry):
        parser = sub.add_parser(command.name, help=command.help)
        command.add_arguments(parser)
        parser.set_defaults(handler_command=functools.partial(run_command, command))


async def run_command(command: CliCommand, args: argparse.Namespace) -> int:
    """Run a contributed command with a fresh :class:`Context`."""
    return await command.run(args, Context())


class Context:
    """The runtime's :class:`~batcher.extension.CommandContext`: settings are read on first use."""

    def __init__(self) -> None:
        self._config: Any = None

    @property
    def config(self) -> Any:
        if self._config is None:
            from batcher.app import load_config
            from batcher.logs import configure_logging

            self._config = load_config()
            configure_logging(self._config.settings.log.format, self._config.settings.log.level)
        return self._config

    @contextlib.asynccontextmanager
    async def services(self, *, start_embedded: bool = False, schema: Literal["migrate", "check"] = "check",
                       http: bool = False) -> AsyncIterator[CommandServices]:
        from batcher.app import open_services

        config = self.config
        async with open_services(config, start_embedded=start_embedded, schema=schema, http=http) as services:
            yield OpenServices(config, services)

    def print_json(self, value: Any) -> None:
        _print_json(value)


class OpenServices:
    """The runtime's :class:`~batcher.extension.CommandServices` over :class:`batcher.models.Services`."""

    def __init__(self, config: Any, services: Any) -> None:
        self._config, self._services = config, services
        self.pool: Any = services.pool
        self.redis_url: str = services.redis_url

    def redis_client(self, *, socket_timeout: float = 30.0) -> Any:
        from batcher.connections import redis_client

        return redis_client(self.redis_url, socket_timeout=socket_timeout)

    async def stored_jobs(self, job_type: str, wanted: str | None = None, *, strict: bool = True,
                          ) -> dict[str, dict[str, Any]]:
        from batcher.jobs import not_synced
        from batcher.store import Q

        rows = await self.pool.fetch(Q["configured_jobs_of_type"], job_type)
        stored = {r["job_name"]: dict(r["params"] or {}) for r in rows}
        if not strict:
            return stored
        in_file = [n for n, spec in self._config.jobs.items() if spec.type == job_type and n not in stored]
        if wanted is not None and wanted in in_file:
            raise not_synced(wanted)
        if wanted is None and not stored and in_file:
            raise not_synced(in_file[0])
        return stored

    async def run_job(self, job: str, params: Mapping[str, Any], *, wait: bool = True) -> dict[str, Any]:
        from batcher.progress import Progress, watch_execution
        from batcher.runjob import JobBusy, run_foreground

        run: Callable[..., Awaitable[dict[str, Any]]] = run_foreground
        try:
            async with Progress() as progress:  # a live line on a terminal, run_progress events otherwise
                return await run(self._services, self._config, job, job_name=None, params=dict(params),
                                 literal_secrets={}, wait=wait, on_start=watch_execution(progress))
        except JobBusy as exc:
            raise BatcherError(str(exc)) from None
