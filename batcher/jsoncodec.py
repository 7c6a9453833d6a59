"""JSON encoding and decoding for the hot paths (HTTP bodies, jsonb COPY): the one owner of orjson.

orjson is several times faster than the standard library, but stricter: it rejects lone surrogate escapes
(which a single bad upstream record may carry), integers beyond 64 bits and non-string keys. Whenever it
refuses, the standard library's result is used instead, so behaviour never changes — only speed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_std_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text; ValueError (json.JSONDecodeError) when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return _std_dumps(value).encode()
