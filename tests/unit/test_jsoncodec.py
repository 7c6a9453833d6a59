"""jsoncodec: text PostgreSQL can store (issue 14, defect 9), and encoding that never raises on text."""

from __future__ import annotations

import json

from batcher import jsoncodec


def test_storable_escapes_nul_and_lone_surrogates_everywhere() -> None:
    """NUL and lone surrogates, in values, nested values and keys, become visible escapes that encode as
    UTF-8; valid text (surrogate pairs decoded to one character included) and non-text values are kept."""
    value = {"k\udc80": ["a\ud800b", ("\x00",), {"n": 1, "ok": "é😀"}], "none": None}
    clean = jsoncodec.storable(value)
    assert clean == {"k\\udc80": ["a\\ud800b", ["\\u0000"], {"n": 1, "ok": "é😀"}], "none": None}
    json.dumps(clean, ensure_ascii=False).encode("utf-8")
    assert jsoncodec.storable_text("plain") == "plain"


def test_dumps_of_a_lone_surrogate_is_a_json_escape_not_an_exception() -> None:
    """orjson refuses a lone surrogate and the UTF-8 encoding of the standard library's output used to
    raise UnicodeEncodeError; the text is now valid JSON with a \\ud800 escape (parsed back the same)."""
    out = jsoncodec.dumps({"label": "x\ud800y"})
    assert out == b'{"label":"x\\ud800y"}'
    assert json.loads(out) == {"label": "x\ud800y"}
    assert jsoncodec.dumps({"a": "é"}) == '{"a":"é"}'.encode()
