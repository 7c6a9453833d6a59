"""Property tests of the CLI's argument types: any text is a value or an ``argparse.ArgumentTypeError``
(the CLI turns it into one usage line and exit 2) — never another exception, which would escape
argparse as a traceback."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from batcher import cli
from tests.properties.strategies import FAST, NASTY_TEXT, text

args = st.one_of(text, st.sampled_from(NASTY_TEXT), st.text(st.sampled_from("[]{}\"0123456789.,:-+eE=TZ "),
                                                                 max_size=60))


def _typed(parse: Callable[[str], Any], value: str) -> Any:
    try:
        return parse(value)
    except argparse.ArgumentTypeError as exc:
        assert str(exc)
        return None


@FAST
@given(key=st.one_of(st.just("records"), text).filter(lambda k: "=" not in k), value=args)
@example(key="x", value="[" * 3000)  # found: RecursionError from json.loads escaped argparse
@example(key="x", value="{\"a\":" * 2000)
@example(key="x", value="1e999")
@example(key="x", value="\ud800")
def test_a_param_is_a_key_and_a_storable_value_or_a_usage_error(key: str, value: str) -> None:
    """``--param KEY=VALUE``: (key, JSON value or string), or ArgumentTypeError."""
    parsed = _typed(cli.parse_param, f"{key}={value}")
    if parsed is not None:
        assert parsed[0] == key.strip()


@FAST
@given(value=args)
@example(value="0001-01-01T00:00:00+23:59")
@example(value="9999-12-31T23:59:59-23:59")
def test_dates_ids_limits_and_names_parse_or_are_usage_errors(value: str) -> None:
    """name_arg, run ids, limits, dates and --before: a value (a --before time that converts to UTC) or
    ArgumentTypeError."""
    for parse in (cli.name_arg, cli.run_id_arg, cli.limit_arg, cli._iso_date):
        _typed(parse, value)
    before = _typed(cli._before, value)
    if before is not None:
        assert before.astimezone(dt.UTC).tzinfo is dt.UTC
