"""Unit tests of batcher.responses: 429 delay rules, body decoding, envelope/record validation."""

from __future__ import annotations

import email.utils
import gzip
import zlib

import pytest
from pydantic import BaseModel

from batcher.handler import Rejected
from batcher.responses import (
    InvalidResponseError,
    decode_body,
    parse_retry_delay,
    safe_url,
    validate_envelope,
    validate_records,
)

NOW = 1_800_000_000.0  # a fixed "now" (epoch seconds)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "120"}, 120.0),
    ({"Retry-After": " 1.5 "}, 1.5),
    ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
    ({"Retry-After": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
    ({"X-RateLimit-Reset": str(int(NOW) + 42)}, 42.0),
    ({"X-RateLimit-Reset": str(int(NOW * 1000) + 2500)}, 2.5),
    ({"X-RateLimit-Reset": "7"}, 7.0),
    ({"X-RateLimit-Reset": str(int(NOW) - 5)}, 0.0),
    ({"Retry-After": "3", "X-RateLimit-Reset": str(int(NOW) + 10)}, 10.0),
    ({"Retry-After": "20", "X-RateLimit-Reset": "4"}, 20.0),
])
def test_retry_delay_forms(headers: dict[str, str], expected: float) -> None:
    """Both headers in both forms (seconds / HTTP date; epoch s, epoch ms / delta): the later wins."""
    delay, problems = parse_retry_delay(headers, NOW)
    assert delay == pytest.approx(expected, abs=1.0 if "GMT" in str(headers) else 1e-6)
    assert problems == []


@pytest.mark.parametrize("headers", [
    {"Retry-After": "soon"}, {"Retry-After": "-3"}, {"X-RateLimit-Reset": "nan"},
    {"X-RateLimit-Reset": "-1"}, {"Retry-After": "", "X-RateLimit-Reset": "inf"},
])
def test_garbage_gives_the_default_and_names_the_header(headers: dict[str, str]) -> None:
    """Garbage values give the safe default and are reported (the client logs a warning)."""
    delay, problems = parse_retry_delay(headers, NOW, default_s=1.0)
    assert delay == 1.0
    assert len(problems) == len(headers)


def test_one_garbage_header_does_not_hide_the_other() -> None:
    """A usable header still counts when its sibling is garbage."""
    delay, problems = parse_retry_delay({"Retry-After": "x", "X-RateLimit-Reset": "5"}, NOW)
    assert delay == 5.0 and len(problems) == 1


def test_no_header_gives_the_default_without_problems_and_delay_is_capped() -> None:
    """No header: the default, silently; a far reset is capped at max_s."""
    assert parse_retry_delay({}, NOW, default_s=2.0) == (2.0, [])
    assert parse_retry_delay({"Retry-After": "99999"}, NOW, max_s=60)[0] == 60


def test_decode_body_gzip_deflate_identity() -> None:
    """gzip, zlib-wrapped deflate, raw deflate and identity bodies decode; garbage raises."""
    data = b'{"a": 1}' * 50
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_body(gzip.compress(data), "gzip") == data
    assert decode_body(zlib.compress(data), "deflate") == data
    assert decode_body(raw_deflate.compress(data) + raw_deflate.flush(), "deflate") == data
    assert decode_body(data, None) == data and decode_body(data, "identity") == data
    with pytest.raises(InvalidResponseError):
        decode_body(b"not gzip", "gzip")
    with pytest.raises(InvalidResponseError):
        decode_body(data, "br")


class Item(BaseModel):
    id: int
    name: str


class Page(BaseModel):
    results: list[object]
    next: str | None = None


def test_validate_records_rejects_only_the_bad_record() -> None:
    """One bad record becomes a Rejected with the raw record and a reason; the others are valid."""
    good, rejected = validate_records([{"id": 1, "name": "a"}, {"id": "x"}, {"id": 3, "name": "c"}], Item)
    assert [i.id for i in good] == [1, 3]
    assert rejected == [Rejected(raw={"id": "x"}, reason=rejected[0].reason)]
    assert "id" in rejected[0].reason and "name" in rejected[0].reason


def test_invalid_envelope_names_what_is_wrong() -> None:
    """An envelope that does not match raises InvalidResponseError naming the field."""
    page = validate_envelope({"results": [1], "next": None}, Page)
    assert page.results == [1]
    with pytest.raises(InvalidResponseError, match="results"):
        validate_envelope({"items": []}, Page)
    with pytest.raises(InvalidResponseError, match="expected a list"):
        validate_records({"id": 1}, Item)


def test_safe_url_drops_query_and_credentials() -> None:
    """URLs in logs and errors carry neither the query string nor user info."""
    assert safe_url("https://u:p@api.x.test:8443/a/b?key=secret#f") == "https://api.x.test:8443/a/b"


def test_safe_excerpt_masks_credentials_and_stays_short() -> None:
    """Body excerpts mask Authorization values, bearer tokens, token-like JSON and form fields,
    secret query parameters and registered secrets, and are cut to the limit on one line."""
    from batcher.logs import register_secret
    from batcher.oauth import safe_excerpt

    register_secret("registered-secret-value-42")
    body = ('{"error": "denied", "access_token": "at-123456", "client_secret": "cs-9"}\n'
            "Authorization: Bearer abcdefghijklmnop refresh_token=rt-777&x=1 "
            "https://h.test/p?api_key=k-555 registered-secret-value-42")
    text = safe_excerpt(body, limit=400)
    for leaked in ("at-123456", "cs-9", "abcdefghijklmnop", "rt-777", "k-555", "registered-secret-value-42"):
        assert leaked not in text
    assert "denied" in text and "\n" not in text
    assert len(safe_excerpt("x" * 1000, limit=50)) == 51  # 50 characters and an ellipsis


@pytest.mark.parametrize(("status", "headers", "body", "limited"), [
    (429, {}, b"", True),
    (403, {"X-RateLimit-Remaining": "0"}, b"", True),
    (403, {}, b'{"error": {"code": 403, "errors": [{"reason": "quotaExceeded"}]}}', True),
    (403, {}, b'{"error": {"code": 403, "errors": [{"reason": "rateLimitExceeded"}]}}', True),
    (403, {}, b'{"error": {"code": 403, "errors": [{"reason": "forbidden"}]}}', False),
    (403, {}, b'{"error": "quota Exceeded?"}', False),
    (403, {}, b"not json, rateLimitExceeded", False),
    (500, {}, b'{"error": {"errors": [{"reason": "rateLimitExceeded"}]}}', False),
])
def test_google_403_quota_reasons_are_rate_limits(status: int, headers: dict[str, str], body: bytes,
                                                  limited: bool) -> None:
    """429, GitHub's exhausted 403 and Google's 403 ``quotaExceeded``/``rateLimitExceeded`` are rate
    limits (pause and retry); any other 403 is a permission error."""
    from batcher.responses import HttpResponse, is_rate_limited

    response = HttpResponse(status=status, headers=headers, body=body, wire_bytes=len(body))
    assert is_rate_limited(response) is limited
