"""The one JSON body parser: every route whose body is JSON, whether FastAPI reads it for a
model or the route reads it itself, answers a body that does not parse with the same 422
``invalid_json`` saying where (bytes that are not UTF-8, an integer too long to read, a key
repeated in an object); integers past 64 bits reach the checks as the exact integers sent."""

from __future__ import annotations

import json

import httpx
import pytest

from parity.api import jsonbody
from tests.conftest import ALICE, bearer, sign_in

V1 = "/api/v1"
JSON = {"content-type": "application/json"}
NOT_UTF8 = b'{"title":"\xff\xfe","type":"command","config":{"command":["true"]}}'
LONG_INT = b'{"address": ' + b"9" * 5000 + b"}"
REPEATED = b'{"title": "x", "type": "command", "config": {"command": ["true"]}, "title": "y"}'


def invalid_json(r: httpx.Response) -> dict[str, object]:
    assert r.status_code == 422, r.text
    error: dict[str, object] = r.json()["error"]
    assert error["code"] == "invalid_json", r.text
    return error


# -- over HTTP: FastAPI-parsed bodies and self-parsed ones alike --------------------------------


async def test_a_body_that_is_not_utf8_is_invalid_json_on_every_json_route(
    client: httpx.AsyncClient,
):
    token = await sign_in(client, ALICE)
    h = {**JSON, **bearer(token)}
    r = await client.post(
        f"{V1}/tasks", json={"title": "t", "config": {"command": ["true"]}}, headers=h
    )
    task_id = r.json()["id"]
    answers = []
    for method, path in [
        ("POST", "/auth/nonce"),
        ("POST", "/auth/keys"),
        ("POST", "/runners"),
        ("POST", "/webhooks"),
        ("POST", "/llm/prompts"),
        ("PUT", f"/tasks/{task_id}"),
        ("POST", "/tasks"),  # parses its own body
    ]:
        r = await client.request(method, f"{V1}{path}", content=NOT_UTF8, headers=h)
        error = invalid_json(r)
        answers.append(json.dumps([error["message"], error["details"]]))
    assert json.loads(answers[0]) == [
        "body: not valid JSON: byte 0xff is not UTF-8 text at line 1, column 11 (position 10)",
        {"field": "body", "line": 1, "column": 11, "position": 10},
    ]
    assert set(answers) == {answers[0]}  # the same answer everywhere


async def test_an_integer_too_long_to_read_is_invalid_json_at_its_position(
    client: httpx.AsyncClient,
):
    r = await client.post(f"{V1}/auth/nonce", content=LONG_INT, headers=JSON)
    error = invalid_json(r)
    assert error["details"] == {"field": "body", "line": 1, "column": 13, "position": 12}
    assert "integer of 5000 digits is too long (at most 4300)" in str(error["message"])
    assert "sys.set_int_max_str_digits" not in str(error["message"])


async def test_a_repeated_key_is_invalid_json_naming_it(client: httpx.AsyncClient):
    h = {**JSON, **bearer(await sign_in(client, ALICE))}
    for path in ("/tasks", "/auth/keys"):  # a self-parsed body, a FastAPI-parsed one
        body = REPEATED if path == "/tasks" else b'{"name": "a", "name": "b"}'
        error = invalid_json(await client.post(f"{V1}{path}", content=body, headers=h))
        assert "is repeated in one object" in str(error["message"]), path
    error = invalid_json(await client.post(f"{V1}/tasks", content=REPEATED, headers=h))
    assert error["message"] == (
        'body: not valid JSON: key "title" is repeated in one object '
        "at line 1, column 68 (position 67)"
    )
    assert (await client.get(f"{V1}/tasks", headers=h)).json() == []


async def test_an_integer_past_64_bits_is_checked_as_sent_not_as_a_float(
    client: httpx.AsyncClient,
):
    h = {**JSON, **bearer(await sign_in(client, ALICE))}
    body = {"title": "x", "config": {"command": ["true"]}, "max_attempts": 2**70}
    r = await client.post(f"{V1}/tasks", content=json.dumps(body), headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == (
        "max_attempts: Input should be less than or equal to 20"
    )


# -- the parser itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", [2**64, 2**70, -(2**63) - 1, 10**30, -(10**40), 2**64 - 1, 2**63, -(2**63)]
)
def test_integers_of_any_width_are_read_exactly(number: int):
    assert jsonbody.loads(f'{{"n": {number}, "x": [1.5, "{number}"]}}'.encode()) == {
        "n": number,
        "x": [1.5, str(number)],
    }


def test_long_digit_runs_that_are_not_integers_keep_their_values():
    doc = b'{"f": 0.12345678901234567890123, "e": 1e-0000000000000000000001, '
    doc += b'"s": "12345678901234567890"}'
    assert jsonbody.loads(doc) == {"f": 0.12345678901234568, "e": 0.1, "s": "12345678901234567890"}


def test_a_body_of_many_values_is_checked_as_strictly():
    # Past the walk's budget, byte scans of the text find the same things.
    many = ", ".join(str(i) for i in range(jsonbody.WALK_BUDGET * 2))
    assert jsonbody.loads(f'{{"a": [{many}], "b": 1}}'.encode())["b"] == 1
    assert jsonbody.loads(f'{{"a": [{many}], "b": {2**70}}}'.encode())["b"] == 2**70
    with pytest.raises(json.JSONDecodeError, match='key "b" is repeated'):
        jsonbody.loads(f'{{"a": [{many}], "b": 1, "b": 2}}'.encode())


@pytest.mark.parametrize(
    "doc",
    [
        b'{"a": 1, "a": 2}',
        b'{"o": {"k": 1, "k": {"x": ":"}}}',
        b'[{"k": 1}, {"k": 2, "k": 3}]',
        b'{"a\\u003a": 1, "a:": 2}',  # the same key, a colon spelled as an escape
        b'{"a": NaN, "a": 1}',  # read by the standard parser
        '{"k": 1, "k": 2}',
    ],
)
def test_a_repeated_key_is_refused_at_its_second_occurrence(doc: bytes | str):
    with pytest.raises(json.JSONDecodeError, match="is repeated in one object") as caught:
        jsonbody.loads(doc)
    text = doc.decode() if isinstance(doc, bytes) else doc
    assert text[caught.value.pos] == '"'  # a key's opening quote
    assert caught.value.pos > text.index('"')  # not the first key: its repetition


@pytest.mark.parametrize(
    "doc",
    [
        b'{"a": {"k": 1}, "b": {"k": 2}}',
        b'{"k": "a:b", "l": ["x:y", {"m": "::"}]}',
        b'{"k\\u003a": 1, "l": 2}',  # an escaped colon, no repeated key
        b'["a", "a", {"a": "a"}]',
    ],
)
def test_equal_keys_in_different_objects_and_colons_in_text_are_fine(doc: bytes):
    assert jsonbody.loads(doc) == json.loads(doc)


def test_bytes_that_are_not_utf8_are_a_json_decode_error_at_the_byte():
    with pytest.raises(jsonbody.NotUtf8) as caught:
        jsonbody.loads(b'{"a":\n "\xc3\x28"}')
    assert isinstance(caught.value, json.JSONDecodeError)
    assert (caught.value.lineno, caught.value.colno, caught.value.pos) == (2, 3, 8)
