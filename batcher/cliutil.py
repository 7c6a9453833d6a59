"""What the ``batcher`` command line and its command implementations share: exit codes, the usage error,
``--param`` values and the JSON summary line. A module of its own so :mod:`batcher.cli` (parsing) and
:mod:`batcher.clicommands` (the work) do not import each other."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from batcher.extension import EXIT_FAILED, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "MAX_NEXT", "UsageError", "_params", "_print_json",
           "json_default"]

MAX_NEXT = 100  # as the admin API's ``n``: `jobs NAME --next N` prints at most this many


class UsageError(Exception):
    """A bad command line (exit 2)."""


def _params(items: Sequence[tuple[str, Any]] | None) -> dict[str, Any]:
    """``--param`` values, already parsed and checked by :func:`batcher.cli.parse_param`."""
    return dict(items or ())


def json_default(value: Any) -> Any:
    """How CLI output shows what JSON has no type for: timestamps and dates as ISO 8601 (with ``T``)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=json_default, ensure_ascii=False), flush=True)
