"""Shared hypothesis settings and strategies for the property tests (tests/properties).

``FAST`` keeps the whole property suite well under a minute on the 2-core test machine: few examples
per property (the interesting cases are pinned with ``@example``), no per-example deadline (a loaded
machine must not turn into a flaky "too slow" failure), and no example database in the checkout.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

#: Strings that try to break SQL, paths, formats and encodings.
NASTY_TEXT = ["", " ", "'", "\"", "' OR '1'='1", "1; DROP TABLE batch_runs; --", "%", "_", "\\", "\x00",
              "\ud800", "null", "NaN", "-1", "0", "9" * 40, "x" * 5000, "../../etc/passwd", "${HOME}",
              "%(x)s", "{0}", "\n", "\u202e", "٣", "²", "1e309", "true"]

text = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=40))
#: What a TOML file (or a JSON body) can hold as a scalar, with the edges of each type.
scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 2**31, 10**7, 1441, 1440]),
    st.floats(allow_nan=True, allow_infinity=True), text,
    st.dates(), st.datetimes(timezones=st.sampled_from([None, dt.UTC])),
)
toml_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)), max_leaves=12)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=15)


def keyed_dicts(known_keys: list[str], values: st.SearchStrategy[Any] = toml_values,
                ) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts whose keys are mostly the model's own (so values get validated) plus some unknown ones."""
    key = st.one_of(st.sampled_from(known_keys), st.sampled_from(known_keys).map(lambda k: k + "_env"), text)
    return st.dictionaries(key, values, max_size=8)


# ------------------------------------------------------------------------------------- a TOML writer


def _toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """``value`` as a TOML inline value (strings as basic strings: JSON escapes are TOML escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(tables: dict[str, Any]) -> str:
    """A TOML document: top-level scalars first, then one ``[table]`` per dict value."""
    lines = [f"{_toml_key(k)} = {toml_value(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    for name, table in tables.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_key(name)}]")
            lines.extend(f"{_toml_key(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"
