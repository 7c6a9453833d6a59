"""Property tests of the usage counters' keys ``{prefix}:{merchant}:{date}:{metric}``: any bytes parse
into a key or a MalformedKey saying what is wrong, any value into a 64-bit integer or a MalformedKey, and
the SCAN pattern selects exactly the keys of its prefix (and merchant) in a real Redis, glob characters
included."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from handlers.usage import MalformedKey, UsageKey, key_date, match_pattern, parse_key, parse_value, strict_date
from tests.properties.strategies import FAST

GLOBBY = st.text(st.sampled_from("ab:*?[]\\^-!é\x00"), max_size=6)
part = st.one_of(GLOBBY, st.text(max_size=8)).filter(lambda s: ":" not in s)
prefixes = part.filter(bool)
dates = st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31))


@FAST
@given(key=st.one_of(st.binary(max_size=60), st.tuples(prefixes, part, st.one_of(dates.map(str), part), part)
                     .map(lambda t: ":".join(t).encode("utf-8", "surrogatepass"))),
       prefix=prefixes)
@example(key=b"usage:m:2025-02-30:calls", prefix="usage")
@example(key=b"usage:m:20250101:calls", prefix="usage")
@example(key="usage:m:٢٠٢٥-٠١-٠١:calls".encode(), prefix="usage")
@example(key=b"usage:m:2025-01-01:\xff", prefix="usage")
@example(key=b"usage", prefix="usage")
def test_any_key_parses_or_is_malformed_with_a_reason(key: bytes, prefix: str) -> None:
    """parse_key: a UsageKey whose parts rebuild the key, or MalformedKey with a reason; key_date never
    raises and agrees with parse_key on valid keys."""
    day = key_date(key, prefix)
    try:
        parsed = parse_key(key, prefix)
    except MalformedKey as exc:
        assert str(exc)
        return
    assert f"{prefix}:{parsed.merchant_id}:{parsed.usage_date}:{parsed.metric_type}".encode() == key
    assert day == parsed.usage_date


@FAST
@given(prefix=prefixes.filter(lambda s: "\x00" not in s), merchant=part.filter(lambda s: bool(s) and "\x00" not in s),
       day=dates, metric=part.filter(lambda s: bool(s) and "\x00" not in s))
def test_a_well_formed_key_round_trips(prefix: str, merchant: str, day: dt.date, metric: str) -> None:
    """Every key built from valid parts parses back into those parts."""
    key = f"{prefix}:{merchant}:{day.isoformat()}:{metric}".encode("utf-8", "surrogatepass")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return  # not UTF-8: malformed by design (test above)
    assert parse_key(key, prefix) == UsageKey(merchant, day, metric)


@FAST
@given(value=st.one_of(st.binary(max_size=30), st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
                       st.sampled_from([b"", b"-0", b"+1", b"01", b" 1", b"1 ", b"1.0", b"\xd9\xa3", b"9" * 19,
                                        b"9223372036854775808", b"-9223372036854775808"])))
def test_any_value_is_a_64_bit_integer_or_malformed(value: bytes) -> None:
    """parse_value: exactly what Redis reads as a 64-bit integer, else MalformedKey naming the value."""
    try:
        number = parse_value(value)
    except MalformedKey as exc:
        assert "is not a 64-bit integer" in str(exc)
        return
    assert -(2**63) <= number < 2**63 and str(number).encode() == value


@FAST
@given(text=st.one_of(st.text(max_size=12), st.binary(max_size=12), dates.map(str)))
def test_strict_date_is_a_date_or_none(text: Any) -> None:
    """strict_date: a real YYYY-MM-DD date (ASCII digits only), else None."""
    day = strict_date(text)
    if day is not None:
        assert day.isoformat() == (text.decode() if isinstance(text, bytes) else text)


@settings(FAST, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prefix=prefixes, merchant=st.one_of(st.none(), part.filter(bool)),
       suffixes=st.lists(st.one_of(GLOBBY, st.text(max_size=6)), max_size=6))
@example(prefix="u*", merchant=None, suffixes=["x"])
@example(prefix="[ab]", merchant="m?", suffixes=["1"])
@example(prefix="a\\", merchant=None, suffixes=[""])
def test_the_scan_pattern_selects_exactly_the_prefix_in_redis(redis_db: Any, prefix: str, merchant: str | None,
                                                              suffixes: list[str]) -> None:
    """SCAN MATCH match_pattern(prefix, merchant) in a real Redis returns exactly the keys that start with
    ``prefix:`` (``prefix:merchant:``) — glob characters in either are literals."""
    literal = f"{prefix}:" + (f"{merchant}:" if merchant is not None else "")
    near = [literal[:-1], literal.replace("[", "a"), prefix + "x:", "a" + literal, literal.upper()]
    keys = {k.encode("utf-8", "surrogatepass") for k in [literal + s for s in suffixes] + near + suffixes if k}
    redis_db.mset({k: 1 for k in keys})
    try:
        found = set(redis_db.scan_iter(match=match_pattern(prefix, merchant), count=1000))
        expected = {k for k in redis_db.scan_iter(count=1000)
                    if k.startswith(literal.encode("utf-8", "surrogatepass"))}
        assert found == expected
    finally:
        redis_db.delete(*keys)
