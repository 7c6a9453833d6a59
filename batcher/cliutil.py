"""What the ``batcher`` command line and its command implementations share: exit codes, the usage error,
``--param`` parsing and the JSON summary line. A module of its own so :mod:`batcher.cli` (parsing) and
:mod:`batcher.clicommands` (the work) do not import each other."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from batcher.extension import EXIT_FAILED, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UsageError", "_params", "_print_json", "parse_param"]


class UsageError(Exception):
    """A bad command line (exit 2)."""


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value``; the value is read as JSON when it parses (numbers, booleans, null), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--param expects key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _params(items: Sequence[str] | None) -> dict[str, Any]:
    return dict(parse_param(p) for p in items or ())


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str, ensure_ascii=False), flush=True)
