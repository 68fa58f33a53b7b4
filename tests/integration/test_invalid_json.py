"""A body that is not JSON is answered as such: 422 ``invalid_json`` saying where the parser
stopped (line, column, position), on routes FastAPI parses and on the task route that parses
its own body (JSON or multipart)."""

from __future__ import annotations

import httpx

from tests.conftest import ALICE, bearer, sign_in

JSON = {"content-type": "application/json"}


async def test_fastapi_parsed_body_names_line_column_and_position(client: httpx.AsyncClient):
    r = await client.post("/api/v1/auth/nonce", content=b'{\n  "address": "0x1",,\n}', headers=JSON)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["message"].startswith("body: not valid JSON: ")
    assert "line 2, column 20 (position 21)" in error["message"]
    assert error["details"] == {"field": "body", "line": 2, "column": 20, "position": 21}


async def test_task_body_that_is_not_json_is_not_called_a_wrong_type(client: httpx.AsyncClient):
    headers = {**JSON, **bearer(await sign_in(client, ALICE))}
    r = await client.post(
        "/api/v1/tasks", content=b'{"title": "x", "type": command}', headers=headers
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_json"
    assert "must be a JSON object" not in error["message"]
    assert error["message"] == (
        "body: not valid JSON: Expecting value at line 1, column 24 (position 23)"
    )
    assert error["details"]["field"] == "body"

    r = await client.post("/api/v1/tasks", content=b'{"title": "\xff"}', headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_json"
    assert "not UTF-8" in r.json()["error"]["message"]


async def test_valid_json_of_the_wrong_shape_still_says_so(client: httpx.AsyncClient):
    headers = {**JSON, **bearer(await sign_in(client, ALICE))}
    r = await client.post("/api/v1/tasks", content=b"[1, 2]", headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == "body: must be a JSON object"


async def test_multipart_task_field_that_is_not_json_names_the_field(client: httpx.AsyncClient):
    headers = bearer(await sign_in(client, ALICE))
    r = await client.post("/api/v1/tasks", files={"task": (None, "{oops")}, headers=headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["details"]["field"] == "task"
    assert error["message"].startswith("task: not valid JSON: ")
    assert "line 1, column 2 (position 1)" in error["message"]
