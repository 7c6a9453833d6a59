"""Logging (DESIGN §9): structlog to stderr, stdlib loggers bridged, secrets redacted, run logs captured.

This module owns the logging configuration of the whole process:

- :func:`configure_logging` routes structlog *and* every stdlib logger (APScheduler, aiohttp, asyncpg,
  the root logger, ``warnings``) through one :class:`structlog.stdlib.ProcessorFormatter` on one stream
  (stderr by default; stdout is for command output only). JSON when the stream is not a TTY, console
  when it is, unless ``fmt`` says otherwise. It may be called again (tests, the CLI after reading
  settings); each call replaces the previous handler.
- :func:`get_logger` hands out bound loggers; events are names (``run_started``), not sentences.
- :func:`bind_run_context` binds ``run_id``/``job``/``attempt`` through structlog's contextvars.
- :data:`RUN_LOG_SINK`: while set in a context, every entry emitted there is also passed, redacted and
  JSON-safe, to the callable (the runner persists them to ``run_logs``).
- Redaction: :func:`register_secret` values, URL passwords and secret-looking query parameters are
  replaced by ``***`` anywhere in an entry (nested values and tracebacks included); values of
  secret-looking keys are masked whole. :func:`redact` applies the same rules to any text.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Final, TextIO
from urllib.parse import quote, quote_plus

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from batcher.jsoncodec import storable_text

MASK: Final = "***"

#: Called with ``(level, event, fields)`` for each entry logged while set; fields are JSON-safe.
RunLogSink = Callable[[str, str, dict[str, Any]], None]
RUN_LOG_SINK: ContextVar[RunLogSink | None] = ContextVar("batcher_run_log_sink", default=None)

_SECRET_KEY_NAMES: Final = frozenset({
    "authorization", "proxy-authorization", "token", "api_key", "apikey", "api-key", "password",
    "passwd", "secret", "access_token", "refresh_token", "client_secret", "cookie", "set-cookie",
})
#: Keys ending in ``_key`` that are identifiers, not credentials.
_NOT_SECRET_KEY_NAMES: Final = frozenset({"scope_key", "sort_key", "partition_key", "lock_key"})
_SECRET_QUERY_PARAMS: Final = ("access_token", "refresh_token", "client_secret", "api_key", "apikey",
                               "token", "key", "secret", "password", "signature", "sig")
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?P<tail>@)")
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:" + "|".join(_SECRET_QUERY_PARAMS) + r")=)[^&#\s\"']+",
                           re.IGNORECASE)
_BEARER = re.compile(r"(?P<head>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)

_THIRD_PARTY_LOGGERS: Final = ("apscheduler", "aiohttp", "asyncpg", "pymongo", "redis")
_CHATTY_LOGGERS: Final = ("apscheduler",)  # logs every job execution at INFO: quiet unless debug
_HANDLER_MARK: Final = "_batcher_logs_handler"
_MAX_DEPTH: Final = 16
_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "critical": logging.CRITICAL}


class _Secrets:
    """The registered secret strings and the one regex matching any of them (longest first).

    Bounded: rotating OAuth tokens are registered on every refresh, so past ``MAX_SECRETS`` forms the
    oldest (long expired) are forgotten. The regex is rebuilt lazily, at the first use after a change.
    """

    MAX_SECRETS: Final = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, None] = {}  # insertion-ordered set
        self._pattern: re.Pattern[str] | None = None
        self._stale = False

    def add(self, value: str) -> None:
        with self._lock:
            known = value in self._values
            for form in (value, quote(value, safe=""), quote_plus(value)):
                self._values.pop(form, None)
                self._values[form] = None  # (re)inserted last: the most recently used is forgotten last
            if known:  # the same set of forms: the regex stays valid (a value registered per request)
                return
            while len(self._values) > self.MAX_SECRETS:
                del self._values[next(iter(self._values))]
            self._stale = True

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern, self._stale = None, False

    @property
    def pattern(self) -> re.Pattern[str] | None:
        if self._stale:
            with self._lock:
                if self._stale:
                    ordered = sorted(self._values, key=len, reverse=True)
                    self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
                    self._stale = False
        return self._pattern


_SECRETS = _Secrets()
_sink_busy: ContextVar[bool] = ContextVar("batcher_run_log_sink_busy", default=False)


def register_secret(value: str) -> None:
    """Never let ``value`` (nor its URL-encoded forms) reach a log line, run log or stored error."""
    if value and value.strip():
        _SECRETS.add(value)


_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"})


def register_credentials(headers: Mapping[str, str]) -> None:
    """Register the credentials a handler sends in its own headers (a token it obtained itself, such as
    Docker Hub's bearer token, or an API key) for redaction: the value and, after an auth scheme
    (``Bearer``, ``token``, ``Basic``), the credential alone. Registering a known value is cheap."""
    for name, value in headers.items():
        if name.lower() in _CREDENTIAL_HEADERS and value:
            register_secret(value)
            scheme, _, credential = value.partition(" ")
            if credential.strip() and scheme.isalpha():
                register_secret(credential.strip())


def forget_secrets() -> None:
    """Drop every registered secret (for tests)."""
    _SECRETS.clear()


def redact(text: str) -> str:
    """``text`` with registered secrets, URL passwords, bearer tokens and secret query values masked."""
    pattern = _SECRETS.pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["tail"], text)
    text = _QUERY_SECRET.sub(lambda m: m["head"] + MASK, text)
    return _BEARER.sub(lambda m: m["head"] + MASK, text)


def is_secret_key(key: str) -> bool:
    """Whether a field named ``key`` holds a credential (``*_env`` references are names, not values)."""
    name = key.lower()
    if name.endswith("_env") or name in _NOT_SECRET_KEY_NAMES:
        return False
    return name in _SECRET_KEY_NAMES or name.endswith(("_token", "_key", "_secret", "_password"))


def _redact_value(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of ``value`` with secrets masked, storable in ``jsonb``.

    Non-JSON types become their ``str``, as do NaN/infinity and anything nested deeper than
    ``_MAX_DEPTH`` (cycles included).
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str) or depth >= _MAX_DEPTH:
        return _safe_text(str(value))
    if isinstance(value, Mapping):
        return {storable_text(str(k)): MASK if is_secret_key(str(k)) else _redact_value(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v, depth + 1) for v in value]
    return _safe_text(str(value))


def _safe_text(text: str) -> str:
    """Redacted, with NUL characters (which ``jsonb`` rejects) escaped as the four characters ``\\x00`` and
    lone surrogates (which no PostgreSQL text holds) as ``\\udXXX``."""
    return storable_text(redact(text).replace("\x00", "\\x00"))


def redact_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Processor: mask secrets everywhere in the entry; runs after exceptions were rendered to text."""
    return {storable_text(key): MASK if is_secret_key(key) else _redact_value(value)
            for key, value in event_dict.items()}


def _redact_foreign_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Processor: redact stdlib records (structlog's own entries were redacted before leaving structlog)."""
    if event_dict.get("_from_structlog"):
        return event_dict
    record = event_dict.pop("_record", None)
    redacted = redact_event(logger, method_name, event_dict)
    redacted["_record"] = record
    return redacted


def send_to_run_log(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Processor: hand the (already redacted) entry to :data:`RUN_LOG_SINK` when one is set."""
    sink = RUN_LOG_SINK.get()
    if sink is None or _sink_busy.get():
        return event_dict
    fields = {k: v for k, v in event_dict.items() if k not in ("event", "level", "timestamp")}
    token = _sink_busy.set(True)  # a sink that logs must not recurse into itself
    try:
        sink(str(event_dict.get("level", method_name)), str(event_dict.get("event", "")), fields)
    except Exception as exc:  # noqa: BLE001 - a broken sink must never break the code that logs
        _report_sink_failure(exc)
    finally:
        _sink_busy.reset(token)
    return event_dict


def _report_sink_failure(exc: Exception) -> None:
    """Tell the operator, without logging (which would reach the broken sink again)."""
    if sys.__stderr__ is not None:
        print(f"run_log_sink_failed error={type(exc).__name__}", file=sys.__stderr__)


def _shared_processors() -> list[Processor]:
    """Applied to structlog entries and to foreign (stdlib) records alike, before formatting."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "console":
        colors = _is_tty(stream)
        return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback)
    return structlog.processors.JSONRenderer()


def _formatter(fmt: str, stream: TextIO) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _redact_foreign_event,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            send_to_run_log,
            _renderer(fmt, stream),
        ],
    )


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


def _resolve_format(fmt: str | None, stream: TextIO) -> str:
    if fmt is None:
        return "console" if _is_tty(stream) else "json"
    if fmt not in ("json", "console"):
        raise ValueError(f"unknown log format {fmt!r} (json or console)")
    return fmt


def _resolve_level(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} ({', '.join(_LEVELS)})") from None


def _install_handler(handler: logging.Handler, level: int) -> None:
    """Make ``handler`` the root logger's only batcher handler; route library loggers to it."""
    _remove_handlers()
    root = logging.getLogger()
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _THIRD_PARTY_LOGGERS:
        library = logging.getLogger(name)
        library.propagate = True
        quiet = name in _CHATTY_LOGGERS and level > logging.DEBUG
        library.setLevel(max(level, logging.WARNING) if quiet else logging.NOTSET)
    logging.captureWarnings(True)


def configure_logging(fmt: str | None, level: str, stream: TextIO | None = None) -> None:
    """Send every log entry of this process to ``stream`` (default: stderr) as JSON or console lines.

    ``fmt`` is ``"json"``, ``"console"`` or None (console on a TTY, else JSON); ``level`` is a level
    name (``debug``, ``info``, ``warning``, ``error``). Safe to call again: the last call wins.
    """
    out = sys.stderr if stream is None else stream
    resolved, threshold = _resolve_format(fmt, out), _resolve_level(level)
    handler = logging.StreamHandler(out)
    handler.setFormatter(_formatter(resolved, out))
    _install_handler(handler, threshold)
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,  # before any stdlib handler (even a foreign one) sees the entry
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        context_class=dict,
        cache_logger_on_first_use=False,  # reconfiguration must reach loggers handed out earlier
    )


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger named ``name`` (default ``batcher``); log event names with key-value fields."""
    logger: FilteringBoundLogger = structlog.get_logger(name or "batcher")
    return logger


def bind_run_context(run_id: int, job: str, attempt: int) -> contextlib.AbstractContextManager[None]:
    """Bind ``run_id``, ``job`` and ``attempt`` to every entry logged inside the ``with`` block."""
    return structlog.contextvars.bound_contextvars(run_id=run_id, job=job, attempt=attempt)


def reset_logging() -> None:
    """Undo :func:`configure_logging`: remove batcher's handler and restore structlog's defaults."""
    _remove_handlers()
    logging.captureWarnings(False)
    structlog.reset_defaults()


def _remove_handlers() -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
