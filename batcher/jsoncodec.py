"""JSON encoding and decoding for the hot paths (HTTP bodies, jsonb COPY): the one owner of orjson.

orjson is several times faster than the standard library, but stricter: it rejects lone surrogate escapes
(which a single bad upstream record may carry), integers beyond 64 bits and non-string keys. Whenever it
refuses, the standard library's result is used instead, so behaviour never changes — only speed.

:func:`storable` is the one rule for text the runtime stores about a run (errors, reasons, run log entries):
PostgreSQL ``text`` and ``jsonb`` cannot hold a NUL character nor a lone surrogate, so both are escaped as
visible text (``\\u0000``, ``\\ud800``). Records are not passed through it: a record the database cannot
hold is a dead letter, never silently changed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_std_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_std_ascii_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates escaped as the six characters ``\\u0000`` / ``\\udXXX``."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def storable(value: Any) -> Any:
    """``value`` with every string in it (mapping keys included) made :func:`storable_text`; other values
    are kept as they are."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text; ValueError (json.JSONDecodeError) when it is not JSON or nested too deeply for
    either parser (orjson stops at 1024 levels, the standard library at the recursion limit)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(bytes(data) if isinstance(data, memoryview) else data)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes; a lone surrogate becomes a ``\\udXXX`` JSON escape (valid JSON, which
    PostgreSQL then refuses as data: a dead letter for a record, not an exception while encoding)."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        try:
            text = _std_dumps(value)
        except RecursionError:  # orjson stops at 255 levels, the standard library at the recursion limit
            raise ValueError("value nested too deeply to encode as JSON") from None
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _std_ascii_dumps(value).encode()


MAX_PAYLOAD_DEPTH = 200
TRUNCATED = "…(truncated: nested too deeply)"


def truncated(value: Any, max_depth: int = MAX_PAYLOAD_DEPTH) -> Any:
    """A copy of ``value`` whose lists and dicts deeper than ``max_depth`` are replaced by :data:`TRUNCATED`,
    built without recursion (for a value too deep for any JSON encoder: its dead letter can still be kept)."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]
    while stack:
        item, parent, slot, depth = stack.pop()
        if isinstance(item, dict | list | tuple) and depth >= max_depth:
            parent[slot] = TRUNCATED
        elif isinstance(item, dict):
            copy: dict[Any, Any] = dict.fromkeys(item)
            parent[slot] = copy
            stack.extend((v, copy, k, depth + 1) for k, v in item.items())
        elif isinstance(item, list | tuple):
            items: list[Any] = [None] * len(item)
            parent[slot] = items
            stack.extend((v, items, i, depth + 1) for i, v in enumerate(item))
        else:
            parent[slot] = item
    return root[0]
