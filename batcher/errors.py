"""The one error hierarchy of batcher.

Every error batcher raises on purpose derives from :class:`BatcherError`. The two branches tell the runner
what to do with a failed run: :class:`TransientError` is retried with backoff, :class:`PermanentError`
fails the run at once. :class:`ConfigError` is a permanent error that makes the CLI exit with status 2.
Messages never contain secrets: callers pass references (variable names), never values.
"""

from __future__ import annotations


class BatcherError(Exception):
    """Root of every error batcher raises deliberately."""


class TransientError(BatcherError):
    """A failure that may succeed when tried again (network, 5xx, timeouts, lost connections)."""


class PermanentError(BatcherError):
    """A failure that will not go away by retrying (bad credentials, invalid params, bad data shape)."""


class ConfigError(PermanentError):
    """Invalid configuration: a bad TOML file, a bad job entry, a bad CLI argument. CLI exit code 2."""

    def __init__(self, message: str, *, file: str | None = None, job: str | None = None,
                 key: str | None = None) -> None:
        parts = [p for p in (file, f"job {job!r}" if job is not None else None,
                             f"key {key!r}" if key is not None else None) if p]
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file = file
        self.job = job
        self.key = key
        self.reason = message


class SchemaTooNewError(PermanentError):
    """The database schema was written by a newer batcher than this one."""


class ServiceUnavailableError(TransientError):
    """A backing service (PostgreSQL, Redis, MongoDB) cannot be reached."""


class LeaseLostError(BatcherError):
    """This worker no longer owns the run (its claim token was fenced out); commit nothing more."""


class RunCancelledError(BatcherError):
    """The run was asked to stop (cancel request, shutdown, timeout) and stopped at a safe point."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
