"""Tests of batcher.logs: output formats, the stdlib bridge, run context, redaction and the run-log sink."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from batcher import logs

SECRET = "s3cr3t/Token+value"


class TtyStream(io.StringIO):
    """A captured stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logging configured as JSON at info level into a fresh buffer; undone afterwards."""
    buffer = io.StringIO()
    logs.configure_logging("json", "info", buffer)
    yield buffer
    logs.reset_logging()
    logs.forget_secrets()


def entries(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_json_output_is_one_object_per_line(stream: io.StringIO) -> None:
    """A structlog entry is one JSON line with event, level, logger, timestamp and the fields."""
    logs.get_logger("batcher.test").info("batch_committed", records=3)
    [entry] = entries(stream)
    assert entry["event"] == "batch_committed"
    assert entry["level"] == "info"
    assert entry["logger"] == "batcher.test"
    assert entry["records"] == 3
    assert entry["timestamp"].endswith("Z")


def test_default_format_is_json_off_a_tty() -> None:
    """With no format given, a stream that is not a TTY gets JSON."""
    buffer = io.StringIO()
    logs.configure_logging(None, "info", buffer)
    try:
        logs.get_logger().info("daemon_ready")
    finally:
        logs.reset_logging()
    assert json.loads(buffer.getvalue())["event"] == "daemon_ready"


def test_default_format_is_console_on_a_tty() -> None:
    """With no format given, a TTY gets console lines (not JSON), and an explicit format overrides it."""
    tty = TtyStream()
    logs.configure_logging(None, "info", tty)
    logs.get_logger().info("daemon_ready", workers=2)
    forced = TtyStream()
    logs.configure_logging("json", "info", forced)
    logs.get_logger().info("daemon_ready")
    logs.reset_logging()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue())
    assert "daemon_ready" in plain and "workers=2" in plain
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain)
    assert json.loads(forced.getvalue())["event"] == "daemon_ready"


def test_level_filters_structlog_and_stdlib(stream: io.StringIO) -> None:
    """At level info, debug entries from structlog and from stdlib loggers are dropped."""
    logs.get_logger().debug("hidden")
    logging.getLogger("asyncpg").debug("hidden too")
    logs.get_logger().warning("shown")
    assert [e["event"] for e in entries(stream)] == ["shown"]


def test_stdlib_loggers_are_bridged(stream: io.StringIO) -> None:
    """asyncpg, aiohttp and root stdlib records come out as JSON entries with their logger name."""
    logging.getLogger("asyncpg").warning("connection %s lost", "c1")
    logging.getLogger("aiohttp.client").error("oops")
    logging.getLogger().warning("from root")
    got = [(e["logger"], e["event"], e["level"]) for e in entries(stream)]
    assert got == [("asyncpg", "connection c1 lost", "warning"), ("aiohttp.client", "oops", "error"),
                   ("root", "from root", "warning")]


def test_apscheduler_info_is_quiet_unless_debug(stream: io.StringIO) -> None:
    """APScheduler's per-execution INFO lines are suppressed at info level but kept at debug level."""
    logging.getLogger("apscheduler.executors.default").info("Running job")
    assert entries(stream) == []
    debug = io.StringIO()
    logs.configure_logging("json", "debug", debug)
    logging.getLogger("apscheduler.executors.default").info("Running job")
    assert [e["event"] for e in entries(debug)] == ["Running job"]


def test_reconfiguring_replaces_the_handler(stream: io.StringIO) -> None:
    """A second configure_logging call sends entries only to the new stream, once."""
    second = io.StringIO()
    logs.configure_logging("json", "info", second)
    logs.get_logger().info("after")
    assert stream.getvalue() == ""
    assert [e["event"] for e in entries(second)] == ["after"]


def test_bad_format_or_level_is_rejected() -> None:
    """An unknown format or level name raises ValueError instead of logging nothing."""
    with pytest.raises(ValueError, match="format"):
        logs.configure_logging("xml", "info", io.StringIO())
    with pytest.raises(ValueError, match="level"):
        logs.configure_logging("json", "loud", io.StringIO())


def test_run_context_is_bound_then_unbound(stream: io.StringIO) -> None:
    """bind_run_context adds run_id, job and attempt inside the block only, for stdlib records too."""
    with logs.bind_run_context(7, "sync", 2):
        logs.get_logger().info("run_started")
        logging.getLogger("asyncpg").warning("inside")
    logs.get_logger().info("outside")
    inside, foreign, outside = entries(stream)
    assert (inside["run_id"], inside["job"], inside["attempt"]) == (7, "sync", 2)
    assert foreign["run_id"] == 7
    assert "run_id" not in outside


def test_registered_secret_is_redacted_everywhere(stream: io.StringIO) -> None:
    """A registered secret and its URL-encoded form are masked in the event, fields, nesting and args."""
    logs.register_secret(SECRET)
    logs.get_logger().info(
        f"event {SECRET}", note=f"value={SECRET}", nested={"deep": [f"x{SECRET}y", {"k": SECRET}]},
        encoded=f"?q={quote(SECRET, safe='')}", obj=ValueError(SECRET))
    logging.getLogger("aiohttp").warning("GET %s failed", f"https://h/?q={SECRET}")
    text = stream.getvalue()
    assert SECRET not in text and quote(SECRET, safe="") not in text
    first, second = entries(stream)
    assert first["nested"] == {"deep": ["x***y", {"k": "***"}]}
    assert first["obj"] == "***"
    assert second["event"] == "GET https://h/?q=*** failed"


def test_secret_in_exception_text_is_redacted(stream: io.StringIO) -> None:
    """A traceback mentioning a secret (structlog or stdlib logger) is masked in the output."""
    logs.register_secret(SECRET)
    try:
        raise RuntimeError(f"auth failed with {SECRET}")
    except RuntimeError:
        logs.get_logger().exception("run_failed")
        logging.getLogger("asyncpg").exception("lost")
    assert SECRET not in stream.getvalue()
    assert all("RuntimeError: auth failed with ***" in e["exception"] for e in entries(stream))


@pytest.mark.parametrize("key", ["authorization", "Authorization", "token", "API_KEY", "apikey", "password",
                                 "secret", "access_token", "refresh_token", "client_secret", "github_token",
                                 "stripe_key"])
def test_secret_looking_keys_are_masked(stream: io.StringIO, key: str) -> None:
    """Values of secret-looking keys are masked at the top level and nested, whatever their case."""
    logs.get_logger().info("request_sent", **{key: "plain-value"}, headers={key: "plain-value"})
    [entry] = entries(stream)
    assert entry[key] == "***"
    assert entry["headers"] == {key: "***"}
    assert "plain-value" not in stream.getvalue()


@pytest.mark.parametrize("key", ["api_key_env", "token_env", "scope_key", "job", "records"])
def test_references_and_ordinary_keys_are_kept(stream: io.StringIO, key: str) -> None:
    """``*_env`` references (variable names) and ordinary keys are logged as they are."""
    logs.get_logger().info("job_loaded", **{key: "DATASYNC_API_KEY"})
    assert entries(stream)[0][key] == "DATASYNC_API_KEY"


def test_redact_masks_url_passwords_tokens_and_registered_secrets() -> None:
    """redact() masks URL passwords, bearer tokens, secret query values and registered secrets."""
    logs.register_secret("hunter2-long")
    try:
        text = logs.redact("postgresql://app:pw@db/x?sslmode=require&password=p2 Bearer abcdefgh12345 "
                           "said hunter2-long")
    finally:
        logs.forget_secrets()
    assert text == "postgresql://app:***@db/x?sslmode=require&password=*** Bearer *** said ***"


def test_run_log_sink_receives_redacted_json_safe_entries(stream: io.StringIO) -> None:
    """Inside a RUN_LOG_SINK context each entry (stdlib too) reaches the sink, redacted and JSON-safe."""
    logs.register_secret(SECRET)
    received: list[tuple[str, str, dict[str, Any]]] = []
    token = logs.RUN_LOG_SINK.set(lambda level, event, fields: received.append((level, event, fields)))
    try:
        with logs.bind_run_context(9, "sync", 1):
            logs.get_logger().info("batch_committed", records=5, api_key="k", at=object(), raw=SECRET)
            logging.getLogger("asyncpg").warning("slow query")
    finally:
        logs.RUN_LOG_SINK.reset(token)
    logs.get_logger().info("not_captured")
    assert [(level, event) for level, event, _ in received] == [("info", "batch_committed"),
                                                               ("warning", "slow query")]
    fields = received[0][2]
    assert fields["records"] == 5 and fields["run_id"] == 9
    assert fields["api_key"] == "***" and fields["raw"] == "***"
    assert isinstance(fields["at"], str)
    assert SECRET not in json.dumps(received)


def test_failing_or_logging_sink_does_not_break_logging(stream: io.StringIO) -> None:
    """A sink that raises, or that logs itself, neither breaks the caller nor recurses."""
    calls: list[str] = []

    def sink(level: str, event: str, fields: dict[str, Any]) -> None:
        calls.append(event)
        logs.get_logger().info("sink_logged")
        raise OSError("database down")

    token = logs.RUN_LOG_SINK.set(sink)
    try:
        logs.get_logger().info("batch_committed")
    finally:
        logs.RUN_LOG_SINK.reset(token)
    assert calls == ["batch_committed"]
    assert [e["event"] for e in entries(stream)] == ["sink_logged", "batch_committed"]


def test_registered_secrets_are_bounded_oldest_first() -> None:
    """Past the cap the oldest secrets are forgotten (rotated tokens), the newest stay redacted."""
    try:
        logs.register_secret("first-secret-value")
        for n in range(logs._Secrets.MAX_SECRETS):
            logs.register_secret(f"rotated-token-{n:05d}")
        newest = f"rotated-token-{logs._Secrets.MAX_SECRETS - 1:05d}"
        assert logs.redact(f"a {newest} b") == "a *** b"
        assert logs.redact("first-secret-value") == "first-secret-value"
    finally:
        logs.forget_secrets()


def test_entries_stay_storable_in_jsonb(stream: io.StringIO) -> None:
    """NUL characters, NaN and cycles reach the sink as text PostgreSQL's jsonb accepts, without failing."""
    received: list[dict[str, Any]] = []
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    token = logs.RUN_LOG_SINK.set(lambda level, event, fields: received.append(fields))
    try:
        logs.get_logger().warning("record_rejected", value="a\x00b", ratio=float("nan"), loop=cyclic)
    finally:
        logs.RUN_LOG_SINK.reset(token)
    [fields] = received
    assert fields["value"] == "a\\x00b"
    assert fields["ratio"] == "nan"
    text = json.dumps(fields, allow_nan=False)
    assert "\\u0000" not in text


def test_reregistering_a_known_secret_keeps_the_pattern_and_its_place() -> None:
    """Registering a value already known (as the HTTP client does for every request's credential) does
    not invalidate the compiled redaction pattern, and keeps that value among the newest (not evicted)."""
    try:
        logs.register_secret("per-request-token")
        assert logs._SECRETS.pattern is not None and not logs._SECRETS._stale
        logs.register_secret("per-request-token")
        assert not logs._SECRETS._stale  # no rebuild of the pattern at the next log line
        for n in range(logs._Secrets.MAX_SECRETS // 3 - 1):
            logs.register_secret(f"other-token-{n:05d}")
            logs.register_secret("per-request-token")
        assert logs.redact("x per-request-token y") == "x *** y"
    finally:
        logs.forget_secrets()


def test_register_credentials_masks_header_credentials_with_and_without_scheme() -> None:
    """The credential of an Authorization-type header a handler sends (a token it obtained itself) is
    registered: masked alone, URL-encoded, and with its scheme; other headers are not registered."""
    try:
        logs.register_credentials({"Authorization": "Bearer hub-issued-token/1", "X-Api-Key": "k3y-value-42",
                                   "Accept": "application/json"})
        text = f"echo hub-issued-token/1 {quote('hub-issued-token/1', safe='')} k3y-value-42 application/json"
        assert logs.redact(text) == "echo *** *** *** application/json"
    finally:
        logs.forget_secrets()
