"""Property tests of what upstream APIs send back: 429 headers, bodies, envelopes and records.

A response can hold anything. Parsing it ends in a value or in the specific error the runtime handles
(InvalidResponseError, ValueError with a reason, a Rejected record) — never another exception, which
would fail a run with a traceback instead of retrying or dead-lettering.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import json
import math
import zlib
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from batcher.responses import (
    HttpResponse,
    InvalidResponseError,
    decode_body,
    is_quota_exhausted,
    is_rate_limited,
    parse_retry_delay,
    safe_url,
    validate_envelope,
    validate_records,
)
from handlers.datasync import parse_body, parse_page, parse_raw_event, validate_events
from tests.properties.strategies import FAST, NASTY_TEXT, json_values, text

NOW = 1_800_000_000.0
HEADERS = ["Retry-After", "X-RateLimit-Reset", "X-RateLimit-Remaining", "X-Retry-After"]
header_values = st.one_of(
    st.sampled_from(NASTY_TEXT), text, st.integers(-(10**20), 10**20).map(str), st.floats().map(str),
    st.datetimes().map(lambda d: email.utils.format_datetime(d)),
    st.sampled_from(["Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 01 Jan 99999 00:00:00 GMT", "Mon, 01 Jan 0001 "
                     "00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 -2359", "Thu, 01 Jan 1970 00:00:00 +0000",
                     "Sun, 06 Nov 1994 08:49:37", "Sunday, 06-Nov-94 08:49:37 GMT", "1e3", " 5 ", "0x10",
                     "1" * 400, "3.", ".5", "1_000"]))


@FAST
@given(headers=st.dictionaries(st.sampled_from(HEADERS), header_values, max_size=4),
       default=st.floats(0, 100), max_s=st.floats(0.001, 7200))
@example(headers={"Retry-After": "Fri, 31 Dec 9999 23:59:59 -2359"}, default=1.0, max_s=60.0)
@example(headers={"Retry-After": "Mon, 01 Jan 0001 00:00:00 +2359"}, default=1.0, max_s=60.0)
@example(headers={"Retry-After": "1" * 400}, default=1.0, max_s=60.0)
@example(headers={"X-RateLimit-Reset": "1" * 400}, default=1.0, max_s=60.0)
def test_a_429_pause_is_always_a_finite_bounded_delay(headers: dict[str, str], default: float, max_s: float) -> None:
    """parse_retry_delay on any header values: a delay in [0, max_s] (never NaN, never an exception),
    and one problem listed per present Retry-After / X-RateLimit-Reset / X-Retry-After value it could not
    read."""
    delay, problems = parse_retry_delay(headers, NOW, default_s=default, max_s=max_s)
    assert math.isfinite(delay) and 0 <= delay <= max(max_s, 0)
    read = [h for h in ("Retry-After", "X-RateLimit-Reset", "X-Retry-After") if h in headers]
    assert len(problems) <= len(read)
    if not read:
        assert problems == [] and delay == min(default, max_s)


@FAST
@given(seconds=st.integers(0, 10**6))
def test_retry_after_seconds_and_its_http_date_agree(seconds: int) -> None:
    """The two forms of Retry-After mean the same pause (the date has whole seconds)."""
    as_date = email.utils.formatdate(NOW + seconds, usegmt=True)
    by_seconds = parse_retry_delay({"Retry-After": str(seconds)}, NOW, max_s=10**7)[0]
    by_date = parse_retry_delay({"Retry-After": as_date}, NOW, max_s=10**7)[0]
    assert by_seconds == seconds and abs(by_date - seconds) < 1.0


@FAST
@given(delta=st.integers(0, 10**6))
def test_x_ratelimit_reset_epoch_seconds_milliseconds_and_delta_agree(delta: int) -> None:
    """X-RateLimit-Reset as epoch seconds, epoch milliseconds or a delta gives the same pause."""
    forms = [str(int(NOW) + delta), str((int(NOW) + delta) * 1000), str(delta)]
    delays = [parse_retry_delay({"X-RateLimit-Reset": f}, NOW, max_s=10**7)[0] for f in forms]
    assert delays == [float(delta)] * 3


@FAST
@given(url=st.one_of(text, st.tuples(st.sampled_from(["http://", "https://", "", "ftp://"]),
                                     st.sampled_from(["u:p@", "", "tok@"]), st.sampled_from(["h", "[::1]", "[::1", ""]),
                                     st.sampled_from(["", ":80", ":99999", ":-1", ":x", ":"]), text)
                     .map("".join)))
@example(url="http://h:99999/events?api_key=s3cret")
@example(url="http://u:s3cret@h:x/events")
def test_safe_url_never_raises_and_drops_credentials(url: str) -> None:
    """safe_url (used in every HTTP error message): a URL without query, fragment and user info, or
    ``<invalid url>`` — found: a port out of range or not a number raised ValueError from the error path."""
    shown = safe_url(url)
    assert "s3cret" not in shown and "?" not in shown


def _response(status: int, headers: dict[str, str], body: bytes) -> HttpResponse:
    return HttpResponse(status=status, headers=headers, body=body, wire_bytes=len(body))


bodies = st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                   st.sampled_from([b'{"error": {"errors": [{"reason": "quotaExceeded"}]}}',
                                    b'{"error": "quotaExceeded"}', b'{"error": {"errors": "Exceeded"}}',
                                    b'{"error": {"errors": [1, null, "rateLimitExceeded"]}}', b"[Exceeded]",
                                    b'"Exceeded"', b"\xff\xfeExceeded", b'{"error": {"errors": {"a": 1}}}']))


@FAST
@given(status=st.sampled_from([200, 403, 429, 500]), body=bodies,
       headers=st.dictionaries(st.sampled_from(HEADERS), header_values, max_size=2))
@example(status=403, body=b'{"error": {"errors": {"Exceeded": 1}}}', headers={})
@example(status=403, body=b'{"error": {"errors": [{"reason": "quotaExceeded"}]}, "x": "\xff"}', headers={})
def test_rate_limit_detection_never_raises(status: int, body: bytes, headers: dict[str, str]) -> None:
    """is_rate_limited / is_quota_exhausted / json() on any body: a boolean, a value or InvalidResponseError."""
    response = _response(status, headers, body)
    assert isinstance(is_rate_limited(response), bool) and isinstance(is_quota_exhausted(response), bool)
    try:
        response.json()
    except InvalidResponseError as exc:
        assert "not JSON" in str(exc)


@FAST
@given(raw=st.one_of(st.binary(max_size=100), st.binary(max_size=100).map(gzip.compress),
                     st.binary(max_size=100).map(zlib.compress)),
       encoding=st.one_of(st.none(), st.sampled_from(["gzip", "x-gzip", "deflate", "identity", "br", "gzip, gzip",
                                                      "GZIP", " , ", "deflate,identity"]), text))
def test_any_body_decodes_or_is_an_invalid_response(raw: bytes, encoding: str | None) -> None:
    """decode_body on any bytes and Content-Encoding: bytes, or InvalidResponseError."""
    try:
        assert isinstance(decode_body(raw, encoding), bytes)
    except InvalidResponseError:
        pass


class _Envelope(BaseModel):
    data: list[Any]
    next: str | None = None


class _Record(BaseModel):
    id: int
    name: str


@FAST
@given(data=json_values)
@example(data={"data": "x" * 10})
def test_a_generic_envelope_validates_or_names_what_is_wrong(data: Any) -> None:
    """validate_envelope: the model, or InvalidResponseError naming the model and the field."""
    try:
        validate_envelope(data, _Envelope)
    except InvalidResponseError as exc:
        assert "_Envelope" in str(exc)


@FAST
@given(items=json_values)
@example(items=[{"id": 1, "name": "a"}, {"id": "x"}, None])
def test_records_are_valid_or_rejected_one_by_one(items: Any) -> None:
    """validate_records: every item either valid or rejected with a reason (a non-list is one error)."""
    try:
        valid, rejected = validate_records(items, _Record)
    except InvalidResponseError as exc:
        assert not isinstance(items, list) and "expected a list" in str(exc)
        return
    assert len(valid) + len(rejected) == len(items)
    assert all(r.reason.startswith("invalid _Record") for r in rejected)


def _datasync_bodies() -> st.SearchStrategy[Any]:
    pagination = st.fixed_dictionaries({}, optional={"hasMore": json_values, "nextCursor": json_values})
    events = st.lists(st.one_of(json_values, st.fixed_dictionaries(
        {}, optional={"id": json_values, "type": json_values, "timestamp": st.one_of(json_values, st.sampled_from(
            ["2025-01-01T00:00:00Z", "2025-02-30T00:00:00", "2025-01-01 25:00", "9999-12-31T23:59:59-23:59",
             "0001-01-01T00:00:00+23:59"]))})), max_size=4)
    nested = st.fixed_dictionaries({"data": events, "pagination": st.one_of(pagination, json_values)})
    flat = st.fixed_dictionaries({"data": st.one_of(events, json_values)}, optional={
        "hasMore": json_values, "nextCursor": json_values})
    return st.one_of(nested, flat.map(lambda d: {**d, "hasMore": d.get("hasMore", True)}), json_values)


@FAST
@given(body=_datasync_bodies())
@example(body={"data": [], "hasMore": True, "nextCursor": ""})
@example(body={"data": [], "pagination": {"hasMore": 1}})
@example(body={"data": [{"id": "1", "type": "t", "timestamp": "0001-01-01T00:00:00+23:59"}], "hasMore": False})
def test_a_datasync_envelope_is_a_page_or_a_value_error_and_events_are_kept_or_rejected(body: Any) -> None:
    """DataSync: parse_page on any JSON gives a Page or a ValueError with a reason; every event of a page
    is a record or a rejected record with its reason (never an exception)."""
    raw = json.dumps(body).encode()
    try:
        page = parse_body(raw)
    except ValueError as exc:
        assert str(exc)
        return
    assert page == parse_page(body) or page.suspicious is False
    records, rejected = validate_events(page.events)
    assert len(records) + len(rejected) == len(page.events)
    assert all(r.reason.startswith("invalid DataSync event: ") for r in rejected)


@FAST
@given(raw=st.one_of(st.binary(max_size=200), st.sampled_from([b"", b"\xff", b'{"a":' * 600,
                                                                b'{"data": [], "hasMore": NaN}'])))
@example(raw=b"[" * 2000)  # found: deeper than orjson's 1024 levels, the fallback raised RecursionError
def test_any_datasync_body_bytes_are_a_page_or_a_value_error(raw: bytes) -> None:
    """parse_body on any bytes (not JSON, not UTF-8, nested too deep): a Page or a ValueError."""
    try:
        parse_body(raw)
    except ValueError as exc:
        assert str(exc)


def _nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@FAST
@given(event=json_values)
@example(event={"id": "1", "type": "t", "timestamp": "2025-01-01T00:00:00Z", "p": _nested(1000, "\x00")})
@example(event={"id": "1", "type": "t", "timestamp": "2025-01-01T00:00:00Z", "p": _nested(1000, "ok")})
def test_a_datasync_event_is_a_record_or_rejected(event: Any) -> None:
    """validate_events (deep check) on any event, however deeply nested: kept or rejected, never raised;
    a dead letter's payload replays into a record or a ValueError."""
    records, rejected = validate_events([event])
    assert len(records) + len(rejected) == 1
    try:
        parse_raw_event(json.dumps(event))
    except ValueError as exc:
        assert str(exc)


def test_an_event_nested_as_deep_as_orjson_allows_is_rejected_not_raised() -> None:
    """Found by the property above (outside hypothesis, which raises the recursion limit): an event
    nested 1020 levels deep — orjson parses up to 1024 — made the NUL/surrogate check raise RecursionError,
    failing the run; it is now a rejected record, and its dead letter's replay a ValueError."""
    event = {"id": "1", "type": "t", "timestamp": "2025-01-01T00:00:00Z", "p": _nested(1020, "\x00")}
    records, rejected = validate_events([event])
    assert records == [] and rejected[0].reason == "invalid DataSync event: nested too deeply to check its text"


def _gsc_params() -> Any:
    from handlers.gsc import GscParams

    return GscParams.model_validate({"client_id": "c", "client_secret": "s", "refresh_token": "r",
                                     "sites": ["sc-domain:example.com"]})


gsc_numbers = st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), text,
                        st.sampled_from([float("inf"), float("-inf"), float("nan"), 10**400]))


@FAST
@given(row=st.one_of(json_values, st.fixed_dictionaries(
    {"keys": st.one_of(st.lists(st.one_of(text, st.just("2026-01-05")), min_size=5, max_size=5), json_values)},
    optional={m: gsc_numbers for m in ("clicks", "impressions", "ctr", "position")})))
@example(row={"keys": ["2026-01-05", "q", "p", "c", "d"], "clicks": float("inf"), "impressions": 1, "ctr": 0.1,
              "position": 1.0})  # found: round(inf) raised OverflowError (stdlib JSON reads Infinity)
@example(row={"keys": ["2026-01-05", "q", "p", "c", "d"], "clicks": 10**400, "impressions": 1, "ctr": 0.1,
              "position": 1.0})
@example(row={"keys": ["2026-01-05", "q", "p", "c", "d"], "clicks": float("nan"), "impressions": 1, "ctr": 0.1,
              "position": 1.0})
def test_a_search_console_row_is_a_record_or_a_value_error(row: Any) -> None:
    """gsc.row_record on any row: a record with finite metrics, or ValueError (the row is rejected)."""
    from handlers.gsc import row_record

    try:
        record = row_record("sc-domain:example.com", _gsc_params(), dt.date(2026, 1, 5), row)
    except ValueError as exc:
        assert str(exc)
        return
    assert all(math.isfinite(v) for v in record[-5:-1])
