"""What comes back from upstream APIs: bodies, 429 delays and validation (used by :mod:`batcher.http`).

This module owns the pure, I/O-free half of the HTTP client:

- :class:`HttpResponse` and :func:`decode_body` (gzip/deflate undone by us, since the wire bytes are
  counted before decompression);
- :func:`parse_retry_delay`, the rules for ``Retry-After`` and ``X-RateLimit-Reset``;
- :func:`validate_envelope` and :func:`validate_records`: the envelope and each record are validated
  separately, so one bad record becomes a :class:`~batcher.handler.Rejected`, not a failed page, while
  an invalid envelope raises :class:`InvalidResponseError` (transient: callers may fetch again).
"""

from __future__ import annotations

import email.utils
import gzip
import math
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ValidationError

from batcher import jsoncodec
from batcher.errors import TransientError
from batcher.handler import Rejected

M = TypeVar("M", bound=BaseModel)
_NUMBER = re.compile(r"^\s*\d+(\.\d+)?\s*$")


class InvalidResponseError(TransientError):
    """The response is not what the API promises (not JSON, a bad envelope, a corrupt body)."""


@dataclass(frozen=True)
class HttpResponse:
    """A finished response: status, headers, and the body decompressed (``wire_bytes`` as received)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    wire_bytes: int

    def json(self) -> Any:
        """The body parsed as JSON (None for an empty body); InvalidResponseError when it is not JSON."""
        if not self.body.strip():
            return None
        try:
            return jsoncodec.loads(self.body)
        except ValueError as exc:
            raise InvalidResponseError(f"the response body is not JSON ({exc.__class__.__name__}: "
                                       f"{str(exc)[:80]})") from None


def safe_url(url: str) -> str:
    """``url`` without its query string, fragment and user info: fit for logs and errors."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number or out of range
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def decode_body(raw: bytes, content_encoding: str | None) -> bytes:
    """Undo ``Content-Encoding`` (gzip, x-gzip, deflate — zlib-wrapped or raw — and identity)."""
    encodings = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
    body = raw
    try:
        for encoding in reversed(encodings):
            if encoding in ("gzip", "x-gzip"):
                body = gzip.decompress(body)
            elif encoding == "deflate":
                try:
                    body = zlib.decompress(body)
                except zlib.error:
                    body = zlib.decompress(body, -zlib.MAX_WBITS)
            elif encoding != "identity":
                raise InvalidResponseError(f"unsupported Content-Encoding {encoding[:20]!r}")
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidResponseError(f"the {content_encoding} body cannot be decompressed: {exc}") from None
    return body


def _retry_after_seconds(value: str, now: float) -> float | None:
    """``Retry-After``: delay seconds, or an HTTP date; None when it is neither."""
    if _NUMBER.match(value):  # seconds; a number ≥ 10⁹ is an epoch time (Docker Hub has sent one)
        return _reset_seconds(value, now)
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def _reset_seconds(value: str, now: float) -> float | None:
    """``X-RateLimit-Reset``: epoch ms (≥ 10¹²), epoch seconds (≥ 10⁹), else a delta in seconds."""
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    if number >= 1e12:
        return max(0.0, number / 1000 - now)
    if number >= 1e9:
        return max(0.0, number - now)
    return number


def parse_retry_delay(headers: Mapping[str, str], now: float, *, default_s: float = 1.0,
                      max_s: float = 3600.0) -> tuple[float, list[str]]:
    """Seconds to pause after a 429, and the header values that could not be parsed.

    - ``Retry-After``: seconds (``"120"``, ``"1.5"``), an epoch time (a number ≥ 10⁹, as Docker Hub's
      ``retry-after`` has been) or an HTTP date (``"Wed, 21 Oct 2026 07:28:00 GMT"``).
    - ``X-Retry-After`` (Docker Hub): read like ``X-RateLimit-Reset``.
    - ``X-RateLimit-Reset``: a number ≥ 10⁹ is an epoch time in seconds (≥ 10¹² in milliseconds);
      a smaller one is a delta in seconds (epoch 10⁹ was in 2001, so no real reset time is that small).
    - Several present: the latest. A time in the past gives 0.
    - Neither usable (absent or garbage): ``default_s``; each garbage value is listed so the caller can
      log a warning. The result is capped at ``max_s``.
    """
    delays: list[float] = []
    problems: list[str] = []
    for name, parse in (("Retry-After", _retry_after_seconds), ("X-RateLimit-Reset", _reset_seconds),
                        ("X-Retry-After", _reset_seconds)):
        value = headers.get(name)
        if value is None:
            continue
        delay = parse(value, now)
        if delay is None:
            problems.append(f"{name}={value[:40]!r}")
        else:
            delays.append(delay)
    delay = max(delays) if delays else default_s
    return min(delay, max_s), problems


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """``loc: message`` for the first ``limit`` errors, without the offending values."""
    parts = [f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
             for err in exc.errors(include_url=False, include_input=False)[:limit]]
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def validate_envelope(data: Any, model: type[M]) -> M:
    """``data`` as ``model`` (the page/envelope); InvalidResponseError naming what is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidResponseError(f"invalid {model.__name__} in the response: "
                                   f"{describe_validation_error(exc)}") from None


def validate_records(items: Iterable[Any], model: type[M]) -> tuple[list[M], list[Rejected]]:
    """Each item validated on its own: ``(valid records, rejected records with their reason)``."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise InvalidResponseError(f"expected a list of {model.__name__} records, got {type(items).__name__}")
    valid: list[M] = []
    rejected: list[Rejected] = []
    for item in items:
        try:
            valid.append(model.model_validate(item))
        except ValidationError as exc:
            rejected.append(Rejected(raw=item, reason=f"invalid {model.__name__}: "
                                                      f"{describe_validation_error(exc)}"))
    return valid, rejected


#: ``error.errors[].reason`` values of Google APIs' 403 answers that mean "slow down", not "forbidden"
#: (https://developers.google.com/webmaster-tools/limits; the standard Google JSON error format).
GOOGLE_RATE_LIMIT_REASONS = frozenset({"quotaExceeded", "rateLimitExceeded", "userRateLimitExceeded",
                                       "dailyLimitExceeded"})


def is_rate_limited(response: HttpResponse) -> bool:
    """A 429, or a 403 that is really a rate limit: GitHub's (``X-RateLimit-Remaining: 0``, or ``Retry-After``
    on its secondary limit) or Google's
    (``{"error": {"errors": [{"reason": "quotaExceeded" | "rateLimitExceeded" …}]}}``)."""
    if response.status == 429:
        return True
    if response.status != 403:
        return False
    if response.headers.get("X-RateLimit-Remaining") == "0" or "Retry-After" in response.headers:
        return True  # GitHub's primary limit, or its secondary limit (a 403 with Retry-After)
    return bool(_google_error_reasons(response.body) & GOOGLE_RATE_LIMIT_REASONS)


def is_quota_exhausted(response: HttpResponse) -> bool:
    """A Google 403 ``quotaExceeded``/``dailyLimitExceeded``: a quota that wants a long pause."""
    return response.status == 403 and bool(
        _google_error_reasons(response.body) & {"quotaExceeded", "dailyLimitExceeded"})


def _google_error_reasons(body: bytes) -> set[str]:
    if not body or b"Exceeded" not in body:
        return set()
    try:
        error = jsoncodec.loads(body).get("error")
        items = error.get("errors") or [] if isinstance(error, dict) else []
        return {str(item.get("reason")) for item in items if isinstance(item, dict)}
    except (ValueError, AttributeError):
        return set()
