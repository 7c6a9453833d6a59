"""The RunContext handed to handlers, and the per-run accounting the runner commits with each batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from batcher.errors import PermanentError
from batcher.handler import HttpClient
from batcher.logs import get_logger
from batcher.models import Services
from batcher.oauth import OAuth2Credentials

MAX_RUN_LOG_ENTRIES = 1000


class RunState:
    """Counters not yet committed, the run's log buffer and its cancel signal."""

    def __init__(self) -> None:
        self.api_calls = 0
        self.ingress_bytes = 0
        self.progress: dict[str, Any] | None = None
        self.result: dict[str, Any] = {}  # the handler's summary, merged into batch_runs.result at finish
        self.logs: list[tuple[str, str, dict[str, Any]]] = []
        self.logs_total = 0
        self.cancelled = asyncio.Event()
        self.cancel_reason: str | None = None
        self.started = time.monotonic()
        # The final status is committed: the run is over in the database although its task may still be
        # returning a connection to the pool; its lease is no longer renewed, nor its loss reported.
        self.final_committed = False

    def add_api_call(self, n: int = 1) -> None:
        self.api_calls += n

    def add_ingress_bytes(self, n: int) -> None:
        self.ingress_bytes += n

    def log_entry(self, level: str, event: str, fields: dict[str, Any]) -> None:
        """RUN_LOG_SINK target: bounded per run (the rest is counted, not kept)."""
        self.logs_total += 1
        if self.logs_total <= MAX_RUN_LOG_ENTRIES:
            self.logs.append((level, event, fields))

    def request_cancel(self, reason: str) -> None:
        """The first reason wins, except that a user's cancel replaces ``shutdown``: a cancelled run must
        end its chain, where a shutdown would queue its retry."""
        if self.cancel_reason is None or (self.cancel_reason == "shutdown" and reason != "lease_lost"):
            self.cancel_reason = reason
        self.cancelled.set()

    def pending(self) -> tuple[int, int, int]:
        """(api calls, ingress bytes, log entries) not committed yet — written by a transaction, then
        :meth:`committed` once it committed. The handler may add more meanwhile (it runs ahead of the
        commit), so only what was written is consumed."""
        return self.api_calls, self.ingress_bytes, len(self.logs)

    def committed(self, pending: tuple[int, int, int]) -> None:
        calls, ingress, logs = pending
        self.api_calls -= calls
        self.ingress_bytes -= ingress
        del self.logs[:logs]


class Context:
    """Implements :class:`batcher.handler.RunContext` for one run."""

    def __init__(self, services: Services, run: Mapping[str, Any], state: RunState,
                 checkpoints: Mapping[str, Any]) -> None:
        self._services = services
        self.run_id = int(run["id"])
        self.root_run_id = int(run["root_run_id"] or run["id"])
        self.job_name = str(run["job_name"])
        self.attempt = int(run["attempt"])
        self.trigger = str(run["trigger"])
        self.trigger_params: Mapping[str, Any] = dict(run["params"] or {})
        self.log = get_logger("batcher.handler").bind(job=self.job_name, run_id=self.run_id)
        self.state = state
        self.cancelled = state.cancelled
        self._checkpoints = dict(checkpoints)

    def checkpoint(self, stream: str) -> Any | None:
        return self._checkpoints.get(stream)

    def remember_checkpoint(self, stream: str, cursor: Any) -> None:
        self._checkpoints[stream] = cursor

    def http(self, namespace: str, *, oauth: OAuth2Credentials | None = None) -> HttpClient:
        """The namespace's client for this run; with ``oauth``, requests carry that credential's bearer
        token from the process's one provider for it (shared by concurrent runs)."""
        runtime = self._services.http
        if runtime is None:
            raise PermanentError("this process has no HTTP runtime")
        provider = runtime.token_provider(oauth) if oauth is not None else None
        client: HttpClient = runtime.client(namespace, accounting=self.state, cancelled=self.cancelled,
                                            log=self.log, oauth=provider)
        return client

    def report_progress(self, *, done: int | None = None, total: int | None = None) -> None:
        progress = dict(self.state.progress or {})
        if done is not None:
            progress["done"] = done
        if total is not None:
            progress["total"] = total
        self.state.progress = progress

    def report_result(self, values: Mapping[str, Any]) -> None:
        self.state.result.update(values)

    @property
    def postgres(self) -> Any:
        return self._services.pool

    @property
    def redis(self) -> Any:
        if self._services.redis is None:
            from batcher.connections import redis_client

            self._services.redis = redis_client(self._services.redis_url)
        return self._services.redis
