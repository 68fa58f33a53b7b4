"""The API's JSON body parser: lone UTF-16 surrogates refused at their escape, everything
else as the standard parser reads it."""

from __future__ import annotations

import json
import math

import pytest

from parity.api.jsonbody import NotUtf8, loads, lone_surrogate


@pytest.mark.parametrize(
    ("doc", "position"),
    [
        ('"\\ud800"', 1),
        ('"\\udc00"', 1),
        ('"ok \\uDBFF"', 4),
        ('"\\ud800x\\udc00"', 1),  # the halves must be adjacent escapes
        ('"\\ud83d\\ude00 \\ud800"', 14),
        ('["a", "\\ud800\\ud800\\udc00"]', 7),  # two highs: the first is alone
    ],
)
def test_a_lone_half_is_found_at_its_escape(doc: str, position: int) -> None:
    assert lone_surrogate(doc) == position
    with pytest.raises(json.JSONDecodeError) as caught:
        loads(doc.encode())
    assert caught.value.pos == position
    assert "surrogate" in caught.value.msg


@pytest.mark.parametrize(
    "doc",
    [
        '"\\ud83d\\ude00"',  # a pair: U+1F600
        '"\\\\ud800"',  # an escaped backslash, then the text "ud800"
        '"\\\\\\ud83d\\ude00"',
        '"\\u00e9 \\n \\""',
        '{"k": ["\\uD83D\\uDE00"]}',
    ],
)
def test_pairs_and_other_escapes_pass(doc: str) -> None:
    assert lone_surrogate(doc) is None
    assert loads(doc.encode()) == json.loads(doc)


def test_what_orjson_refuses_is_still_read() -> None:
    out = loads(b'{"a": NaN, "b": 123456789012345678901234567890}')
    assert math.isnan(out["a"]) and out["b"] == 123456789012345678901234567890


def test_not_json_and_not_utf8_raise_value_errors() -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(b'{"a": }')
    # Bytes that are not UTF-8: a JSONDecodeError at the offending byte, the decoder's error
    # kept as its cause.
    with pytest.raises(NotUtf8) as caught:
        loads(b'{"a": "\xff"}')
    assert caught.value.pos == 7 and isinstance(caught.value.cause, UnicodeDecodeError)


def test_an_error_message_holding_a_lone_surrogate_still_renders() -> None:
    from parity.api.errors import envelope

    response = envelope(422, "invalid", "field '\ud800' is unknown")
    assert response.status_code == 422
    assert json.loads(response.body)["error"]["message"] == "field '\ud800' is unknown"


def test_a_body_nested_too_deeply_is_not_json() -> None:
    for depth in (2_000, 100_000):
        with pytest.raises(json.JSONDecodeError, match="depth limit exceeded"):
            loads(b"[" * depth + b"]" * depth)
        # With what only the standard parser reads (NaN), the same answer from it.
        with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
            loads(b"[NaN, " + b"[" * depth + b"]" * depth + b"]")
    assert loads(b"[" * 500 + b"]" * 500) is not None  # orjson reads up to 1,024 levels


def test_a_byte_order_mark_is_ignored() -> None:
    assert loads(b'\xef\xbb\xbf{"a": NaN}')["a"] != 0


@pytest.mark.parametrize(
    ("doc", "position"),
    [
        ('"\\u0000"', 1),
        ('{"title": "a\\u0000b"}', 12),
        ('{"k\\u0000": 1}', 3),  # in a key too
        ('["\\\\u0000", "\\u0000"]', 13),  # the first is the text "\\u0000"
        ('{"a": 1e400, "b": "\\u0000"}', 19),  # the standard parser's path as well
    ],
)
def test_a_nul_is_refused_at_its_escape(doc: str, position: int) -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        loads(doc.encode())
    assert caught.value.pos == position
    assert "NUL" in caught.value.msg


@pytest.mark.parametrize("doc", ['"\\\\u0000"', '"\\u0001 \\u00a0"', '"u0000"'])
def test_text_that_only_looks_like_a_nul_passes(doc: str) -> None:
    assert loads(doc.encode()) == json.loads(doc)
