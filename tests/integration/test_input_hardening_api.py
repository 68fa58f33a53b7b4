"""API conventions a client relies on when it sends something wrong: the 413 in the shape of
the path's clients, the errors the OpenAPI document lists, ``Allow`` on a 405, messages that
say what is wrong (NaN, large numbers), and nothing accepted silently (null in a PUT, a
boolean spelled as a string)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ALICE, bearer, sign_in
from tests.integration.queue_helpers import device, register_runner
from tests.integration.test_gateway_api import api_key

V1 = "/api/v1"
JSON = {"content-type": "application/json"}
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def task(**extra: Any) -> dict[str, Any]:
    return {"title": "t", "type": "command", "config": {"command": ["true"]}, **extra}


def refusal(r: httpx.Response) -> tuple[str, str]:
    """(field, message) of a 422 of the API."""
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    details = error["details"]
    field = details.get("field") or details["errors"][0]["field"]
    message = error["message"] if "field" in details else details["errors"][0]["message"]
    return str(field), str(message)


# -- 413 in the shape of the path's clients ----------------------------------------------------


async def test_a_body_past_the_limit_is_413_in_the_shape_each_client_reads(
    client: httpx.AsyncClient,
):
    key = await api_key(client, ALICE)
    big = b'{"model": "m", "prompt": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    h = {**JSON, **bearer(key)}
    message = "request body exceeds 10485760 bytes"
    r = await client.post("/v1/chat/completions", content=big, headers=h)
    assert r.status_code == 413
    assert r.json() == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "payload_too_large",
        }
    }
    r = await client.post("/ollama/api/generate", content=big, headers=h)
    assert (r.status_code, r.json()) == (413, {"error": message})
    r = await client.post(f"{V1}/tasks", content=big, headers=h)
    assert r.status_code == 413
    assert r.json() == {"error": {"code": "payload_too_large", "message": message, "details": {}}}


# -- the OpenAPI document lists the errors -------------------------------------------------------


async def test_openapi_lists_each_operations_errors_in_the_shape_sent(client: httpx.AsyncClient):
    spec = (await client.get("/openapi.json")).json()
    ref = "#/components/schemas/"

    def schema(path: str, method: str, code: str) -> str:
        response = spec["paths"][path][method]["responses"][code]
        return str(response["content"]["application/json"]["schema"]["$ref"])

    task_ops = spec["paths"]["/api/v1/tasks/{task_id}"]
    assert {"401", "403", "404", "422", "503", "default"} <= set(task_ops["get"]["responses"])
    assert {"409", "413"} <= set(task_ops["put"]["responses"])
    assert schema("/api/v1/tasks/{task_id}", "get", "404") == ref + "Error"
    assert schema("/api/v1/tasks/{task_id}", "put", "422") == ref + "Error"
    assert "Retry-After" in task_ops["get"]["responses"]["503"]["headers"]
    nonce = spec["paths"]["/api/v1/auth/nonce"]["post"]["responses"]
    assert "401" not in nonce  # no token needed there
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "413", "429", "default"} <= set(chat) and "422" not in chat
    assert schema("/v1/chat/completions", "post", "400") == ref + "OpenAIError"
    assert schema("/ollama/api/generate", "post", "default") == ref + "OllamaError"
    assert set(spec["paths"]["/api/v1/storage/pin/{cid}"]["post"]["responses"]) >= {"200", "201"}
    logs = spec["paths"]["/api/v1/tasks/{task_id}/logs"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in logs
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "HTTPValidationError" not in str(spec["paths"])


# -- 405 lists every method of the path ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/v1/tasks/00000000-0000-0000-0000-000000000000", "GET, PUT, DELETE"),
        ("/api/v1/auth/keys", "GET, POST"),
        ("/api/tasks/00000000-0000-0000-0000-000000000000", "GET, PUT, DELETE"),
    ],
)
async def test_a_405_lists_every_method_the_path_serves(
    client: httpx.AsyncClient, path: str, allowed: str
):
    h = bearer(await sign_in(client, ALICE))
    r = await client.patch(path, headers=h)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allowed
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert allowed in r.json()["error"]["message"]


# -- messages that say what is wrong -------------------------------------------------------------


async def test_nan_is_called_nan_not_out_of_bounds(client: httpx.AsyncClient):
    h = {**JSON, **bearer(await sign_in(client, ALICE))}
    body = (
        '{"title":"x","type":"command","config":{"command":["true"]},"resources":{"cpu_cores":NaN}}'
    )
    r = await client.post(f"{V1}/tasks", content=body, headers=h)
    assert refusal(r) == ("resources.cpu_cores", "Input should be a number, not NaN")
    r = await client.post(
        f"{V1}/llm/prompts",
        content='{"model_name":"m1","prompt":"x","deadline_seconds":NaN}',
        headers=h,
    )
    assert refusal(r) == ("deadline_seconds", "Input should be a number, not NaN")
    runner, _ = await register_runner(client, h["Authorization"].split()[1], device())
    r = await client.post(f"{V1}/runners/tasks/claim?wait=nan", headers=bearer(runner))
    assert refusal(r) == ("wait", "Input should be a number, not NaN")
    r = await client.post(
        f"{V1}/runners/heartbeat", content='{"cpu_usage": NaN}', headers={**JSON, **bearer(runner)}
    )
    assert refusal(r) == ("cpu_usage", "Input should be a number, not NaN")


async def test_a_float_too_large_for_an_integer_field_says_so(client: httpx.AsyncClient):
    h = {**JSON, **bearer(await sign_in(client, ALICE))}
    r = await client.post(f"{V1}/tasks", content='{"title":"x","priority":1e30}', headers=h)
    field, message = refusal(r)
    assert field == "priority"
    assert "input string" not in message and "too large" in message


async def test_a_seed_past_64_bits_is_told_the_range(client: httpx.AsyncClient):
    key = await api_key(client, ALICE)
    r = await client.post("/v1/chat/completions", json={**CHAT, "seed": 2**70}, headers=bearer(key))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "seed"
    assert "signed 64-bit integer" in r.json()["error"]["message"]


# -- nothing accepted silently --------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["title", "description", "config", "resources", "labels", "max_attempts", "priority"]
)
async def test_null_in_a_task_update_is_refused_naming_the_field(
    client: httpx.AsyncClient, field: str
):
    h = bearer(await sign_in(client, ALICE))
    r = await client.post(f"{V1}/tasks", json=task(), headers=h)
    task_id = r.json()["id"]
    r = await client.put(f"{V1}/tasks/{task_id}", json={field: None}, headers=h)
    assert refusal(r) == (
        field,
        "must not be null (leave the field out to keep its value)",
    )


async def test_null_not_before_makes_the_task_available_now(client: httpx.AsyncClient):
    h = bearer(await sign_in(client, ALICE))
    r = await client.post(f"{V1}/tasks", json=task(not_before="2999-01-01T00:00:00Z"), headers=h)
    task_id = r.json()["id"]
    assert r.json()["available_at"].startswith("2999")
    r = await client.put(f"{V1}/tasks/{task_id}", json={"not_before": None}, headers=h)
    assert r.status_code == 200, r.text
    assert not r.json()["available_at"].startswith("2999")


@pytest.mark.parametrize("value", ["yes", 1, "true"])
async def test_stream_must_be_a_boolean_everywhere(client: httpx.AsyncClient, value: object):
    token = await sign_in(client, ALICE)
    key = await api_key(client, ALICE)
    r = await client.post(
        f"{V1}/llm/prompts",
        json={"model_name": "m1", "prompt": "x", "stream": value},
        headers=bearer(token),
    )
    assert refusal(r)[0] == "stream"
    for path, body in [
        ("/v1/chat/completions", {**CHAT, "stream": value}),
        ("/v1/completions", {"model": "m1", "prompt": "x", "stream": value}),
        ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": value}}),
    ]:
        r = await client.post(path, json=body, headers=bearer(key))
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["param"] in ("stream", "stream_options.include_usage")
    for path, body in [
        ("/ollama/api/chat", {**CHAT, "stream": value}),
        ("/ollama/api/generate", {"model": "m1", "prompt": "x", "stream": value}),
    ]:
        r = await client.post(path, json=body, headers=bearer(key))
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"].startswith("stream")
