"""No client mistake is a 500. Two sweeps over the real app and database:

- every route of the OpenAPI schema, as a user, an operator and a runner, with malformed
  path and query values (out-of-range integers, non-UUIDs, lone surrogates, ...) and malformed
  bodies (not JSON, NaN, a lone surrogate, the wrong type for each declared field);
- valid bodies of the main write routes (task, runner, heartbeat, prompt, the OpenAI and Ollama
  gateways, an FL session over a stored dataset, a webhook, a runner's completion with a live
  claim token), each with one value anywhere in it replaced by a wrong one, or removed.

Every answer must be below 500 and carry an error object with a message; a 422 must name what
is wrong.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from parity.api.jsonbody import JsonRoute
from parity.app import create_app
from parity.container import Container
from tests.conftest import ADMIN, ALICE, bearer, sign_in
from tests.integration.queue_helpers import claim as claim_one
from tests.integration.queue_helpers import claimed, create_task, register_runner

V1 = "/api/v1"
ZERO_UUID = "00000000-0000-0000-0000-000000000000"

PATH_VALUES = ["0", "-1", "abc", ZERO_UUID, "x" * 300, "%00", "%ED%A0%80", "9" * 30, "1e999"]
QUERY_VALUES = ["-1", "abc", "", "1e999", "9" * 30, "NaN", "%ff", "x" * 3000]
RAW_BODIES = [
    b"",
    b"{}",
    b"[]",
    b'"s"',
    b"null",
    b'{"a": NaN}',
    b'{"a": 1e999}',
    b'{"\\ud800": 1}',
    b"{",
    b"\xff\xfe",
    b"[" * 5000 + b"]" * 5000,  # nested past any parser's depth limit
    b"[NaN, " + b"[" * 5000 + b"]" * 5000 + b"]",
]
# Wrong values put in place of a field (json.dumps writes the surrogates as \ud800 escapes).
WRONG: list[Any] = [
    None,
    "\ud800",
    "a\udfffb",
    10**30,
    -(10**30),
    2**40,  # past a 32-bit column, within a 64-bit one
    -(2**40),
    -1,
    0,
    1.5,
    "",
    "x" * 5000,
    [],
    {},
    True,
    [1, "a", None],
    {"a": {"b": []}},
]


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        found: dict[str, Any] = spec["components"]["schemas"].get(schema["$ref"].split("/")[-1], {})
        return found
    return schema


def _properties(schema: dict[str, Any] | None, spec: dict[str, Any]) -> list[str]:
    if not schema:
        return []
    s = _resolve(schema, spec)
    names = list(s.get("properties", {}))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in s.get(key, []):
            names += _properties(sub, spec)
    return names


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value: the keys of objects, the items of lists, nested."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _with(body: Any, path: tuple[Any, ...], value: Any, *, remove: bool = False) -> Any:
    out = json.loads(json.dumps(body))
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    if remove:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def _mutants(body: dict[str, Any]) -> Iterator[Any]:
    yield {**body, "\ud800": 1}
    yield {**body, "unknown_field_xyz": 1}
    for path in _paths(body):
        yield _with(body, path, None, remove=True)
        for value in WRONG:
            yield _with(body, path, value)


def _check(r: httpx.Response, what: str, failures: list[str]) -> None:
    if r.status_code >= 500:
        failures.append(f"{what} -> {r.status_code} {r.text[:200]}")
        return
    if r.status_code < 400:
        return
    try:
        error = r.json()["error"]
        # The Ollama API's errors are {"error": "message"}, as Ollama answers them.
        message = error if isinstance(error, str) else error["message"]
    except (ValueError, KeyError, TypeError):
        failures.append(f"{what} -> {r.status_code} without an error object: {r.text[:200]}")
        return
    if not isinstance(message, str) or not message:
        failures.append(f"{what} -> {r.status_code} with an empty message")


async def test_every_route_answers_malformed_input_below_500(client: httpx.AsyncClient) -> None:
    user = await sign_in(client, ALICE)
    admin = await sign_in(client, ADMIN)
    runner, _ = await register_runner(client, user, "sweep-device")
    spec = (await client.get("/openapi.json")).json()
    failures: list[str] = []
    sent = 0
    # Logging out revokes the token the rest of the sweep uses: last.
    routes = sorted(spec["paths"].items(), key=lambda item: item[0].endswith("/auth/logout"))
    for template, operations in routes:
        for method, op in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            params = op.get("parameters", [])
            if any(p["in"] == "query" and p["name"] in ("follow", "wait") for p in params):
                # Long-polls and followed streams: their waits are bounded, not instant.
                params = [p for p in params if p["name"] not in ("follow", "wait")]
            path_names = [p["name"] for p in params if p["in"] == "path"]
            query_names = [p["name"] for p in params if p["in"] == "query"]
            content = (op.get("requestBody") or {}).get("content", {})
            fields = _properties(content.get("application/json", {}).get("schema"), spec)

            def url_with(
                value: str, template: str = template, names: list[str] = path_names
            ) -> str:
                url = template
                for name in names:
                    url = url.replace("{" + name + "}", value)
                return url

            requests: list[tuple[str, dict[str, str] | None, bytes | None]] = []
            for value in PATH_VALUES if path_names else [""]:
                url = url_with(value)
                requests.append((url, None, None))
                requests += [(url, None, raw) for raw in RAW_BODIES] if content else []
            base = url_with(ZERO_UUID)
            for name in query_names:
                requests += [(base, {name: v}, None) for v in QUERY_VALUES]
            for name in fields:
                requests += [(base, None, json.dumps({name: v}).encode()) for v in WRONG]
            for token in (user, admin, runner):
                for url, query, raw in requests:
                    headers = bearer(token)
                    if raw is not None:
                        headers["content-type"] = "application/json"
                    r = await client.request(
                        method.upper(), url, params=query, content=raw, headers=headers
                    )
                    sent += 1
                    _check(r, f"{method.upper()} {url[:80]} {query} {raw!r:.60}", failures)
    assert sent > 10_000  # the schema lists the API: a sweep this small means it did not
    assert not failures, "\n".join(failures[:30])


async def _upload(client: httpx.AsyncClient, token: str, data: bytes) -> str:
    r = await client.put(f"{V1}/storage/upload", content=data, headers=bearer(token))
    assert r.status_code in (200, 201), r.text
    return str(r.json()["cid"])


def _dataset() -> bytes:
    lines = ["f1,f2,f3,f4,label"]
    for i in range(60):
        lines.append(",".join(f"{(i * 7 + j) % 5 + (i % 3)}.5" for j in range(4)) + f",{i % 3}")
    return ("\n".join(lines) + "\n").encode()


async def test_valid_bodies_with_one_wrong_value_answer_below_500(
    client: httpx.AsyncClient,
) -> None:
    user = await sign_in(client, ALICE)
    model = {"model_name": "m1", "is_loaded": True, "max_tokens": 4096, "context_length": 8192}
    runner_body: dict[str, Any] = {
        "device_id": "sweep-llm",
        "capabilities": {"cpu_cores": 4, "memory_mb": 8192, "gpus": 0, "docker": False},
        "max_concurrent_tasks": 4,
        "labels": {"zone": "a"},
        "models": [model],
    }
    r = await client.post(f"{V1}/runners", json=runner_body, headers=bearer(user))
    assert r.status_code == 201, r.text
    runner = str(r.json()["runner_token"])
    await create_task(client, user)
    claim = await claimed(client, runner)
    claim_token = str(claim["claim_token"])
    task_id = str(claim["task"]["id"])
    second = await create_task(client, user)  # one to complete
    r = await claim_one(client, runner, second["id"])
    assert r.status_code == 200, r.text
    second_token = str(r.json()["claim_token"])
    r = await client.post(f"{V1}/llm/prompts", json={"model": "m1", "prompt": "hi"},
                          headers=bearer(user))  # fmt: skip
    assert r.status_code == 202, r.text
    prompt_id = str(r.json()["id"])
    r = await claim_one(client, runner, prompt_id)
    assert r.status_code == 200, r.text
    prompt_token = str(r.json()["claim_token"])
    pending = await create_task(client, user)  # one to edit
    cid = await _upload(client, user, _dataset())

    chat = {"role": "user", "content": "hi"}
    # The gateways answer a served model only when a runner does: they are swept with a model
    # nobody serves (checked after the body), so no request waits for an answer.
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        (
            "POST",
            f"{V1}/tasks",
            user,
            {
                "title": "t",
                "type": "command",
                "config": {"command": ["echo", "hi"], "env": {"A": "b"}},
                "resources": {"cpu_cores": 1, "memory_mb": 64},
                "labels": {"k": "v"},
                "priority": 1,
                "timeout_seconds": 30,
                "max_attempts": 2,
            },
        ),
        ("PUT", f"{V1}/tasks/{pending['id']}", user, {"title": "u", "labels": {"a": "b"}}),
        ("POST", f"{V1}/runners", user, {**runner_body, "device_id": "sweep-other"}),
        (
            "POST",
            f"{V1}/runners/heartbeat",
            runner,
            {"status": "online", "cpu_usage": 0.5, "memory_usage": 0.5, "models": [model]},
        ),
        (
            "POST",
            f"{V1}/llm/prompts",
            user,
            {"model": "m1", "prompt": "hi", "max_tokens": 8, "temperature": 0.5},
        ),
        (
            "POST",
            "/v1/chat/completions",
            user,
            {
                "model": "unserved",
                "messages": [chat],
                "max_tokens": 8,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ),
        ("POST", "/v1/completions", user, {"model": "unserved", "prompt": "hi", "max_tokens": 8}),
        (
            "POST",
            "/ollama/api/chat",
            user,
            {"model": "unserved", "messages": [chat], "stream": False},
        ),
        (
            "POST",
            "/ollama/api/generate",
            user,
            {"model": "unserved", "prompt": "hi", "stream": False},
        ),
        (
            "POST",
            f"{V1}/federated-learning/sessions",
            user,
            {
                "name": "s",
                "model_type": "neural_network",
                "total_rounds": 2,
                "min_participants": 2,
                "training_data": {
                    "dataset_cid": cid,
                    "data_format": "csv",
                    "split_strategy": "non_iid",
                    "test_split": 0.2,
                    "metadata": {"alpha": 0.5, "min_samples": 5},
                },
                "config": {
                    "aggregation_method": "fedavg",
                    "learning_rate": 0.1,
                    "batch_size": 8,
                    "local_epochs": 1,
                    "model_config": {"input_size": 4, "hidden_sizes": [8], "output_size": 3},
                },
            },
        ),
        (
            "POST",
            f"{V1}/webhooks",
            user,
            {"url": "https://93.184.216.34/hook", "events": ["task.completed"]},
        ),
        (
            "POST",
            f"{V1}/runners/tasks/{task_id}/logs",
            runner,
            {"claim_token": claim_token, "seq": 0, "lines": ["a", "b"]},
        ),
        (
            "POST",
            f"{V1}/runners/tasks/{second['id']}/complete",
            runner,
            {
                "claim_token": second_token,
                "output": "hi",
                "exit_code": 0,
                "result_hash": "ab" * 32,
                "usage": {"cpu_seconds": 0.5},
            },
        ),
        (
            "POST",
            f"{V1}/llm/prompts/{prompt_id}/complete",
            runner,
            {
                "claim_token": prompt_token,
                "response": "hello",
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            },
        ),
        ("PUT", f"{V1}/runners/webhooks", runner, {"url": "https://93.184.216.34/push"}),
        ("POST", f"{V1}/auth/keys", user, {"name": "k", "expires_in_days": 30}),
        (
            "POST",
            f"{V1}/runners/tasks/{task_id}/fail",
            runner,
            {"claim_token": claim_token, "error": "boom", "exit_code": 1},
        ),
        # Last: a reconcile gives back every claim it does not list.
        ("POST", f"{V1}/runners/tasks/reconcile", runner, {"claims": [claim_token]}),
    ]
    failures: list[str] = []
    sent = 0
    expected = {f"{V1}/llm/prompts": 202, f"{V1}/tasks": 201, f"{V1}/runners": 201}
    expected |= {f"{V1}/webhooks": 201, f"{V1}/federated-learning/sessions": 201}
    expected |= {f"{V1}/auth/keys": 201}
    for method, url, token, body in cases:
        # The body itself is right: what the sweep changes is what is wrong.
        r = await client.request(method, url, json=body, headers=bearer(token))
        if url.startswith(("/v1/", "/ollama/")):
            assert r.status_code == 404 and "unserved" in r.text, (url, r.text)
        else:
            assert r.status_code == expected.get(url, 200), (url, r.text)
        for mutant in _mutants(body):
            r = await client.request(
                method,
                url,
                content=json.dumps(mutant).encode(),
                headers={**bearer(token), "content-type": "application/json"},
            )
            sent += 1
            _check(r, f"{method} {url} {json.dumps(mutant)[:160]}", failures)
    assert sent > 1500  # every place of every body, every wrong value
    assert not failures, "\n".join(failures[:30])


# Escapes that are valid JSON syntax but not text any column holds: a lone half of a UTF-16
# surrogate pair, and a NUL (PostgreSQL's text refuses it: it failed there as a 422 naming no
# field, and a runner's report of output holding one could never be stored; SQLite stored it).
NOT_TEXT = [
    (b'{"title": "t", "type": "command", "labels": {"\\udc00x": "v"}}', b"\\udc00", "surrogate"),
    (
        b'{"title": "a\\u0000b", "type": "command", "config": {"command": ["true"]}}',
        b"\\u0000",
        "NUL",
    ),
]


@pytest.mark.parametrize(("raw", "escape", "word"), NOT_TEXT, ids=["surrogate", "nul"])
async def test_an_escape_that_is_not_text_is_refused_as_invalid_json_at_its_position(
    client: httpx.AsyncClient, raw: bytes, escape: bytes, word: str
) -> None:
    headers = {**bearer(await sign_in(client, ALICE)), "content-type": "application/json"}
    urls = (f"{V1}/tasks", f"{V1}/federated-learning/sessions", f"{V1}/webhooks", f"{V1}/auth/keys")
    for url in urls:
        r = await client.post(url, content=raw, headers=headers)
        assert r.status_code == 422, (url, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_json", (url, error)
        assert error["details"]["position"] == raw.index(escape), (url, error)
        assert word in error["message"], (url, error)
    assert (await client.get(f"{V1}/tasks", headers=headers)).json() == []  # nothing written


async def test_a_surrogate_pair_is_one_character_and_kept(client: httpx.AsyncClient) -> None:
    headers = {**bearer(await sign_in(client, ALICE)), "content-type": "application/json"}
    r = await client.post(
        f"{V1}/tasks",
        content=b'{"title": "\\ud83d\\ude00", "type": "command", '
        b'"config": {"command": ["echo", "hi"]}}',
        headers=headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["title"] == "\U0001f600"


async def test_integer_parameters_past_64_bits_are_422_naming_the_parameter(
    client: httpx.AsyncClient,
) -> None:
    headers = bearer(await sign_in(client, ALICE))
    big = str(2**63)
    for url, name in (
        (f"{V1}/tasks?offset={big}", "offset"),
        (f"{V1}/llm/prompts?offset={big}", "offset"),
        (f"{V1}/events?after={big}", "after"),
        (f"{V1}/federated-learning/sessions/{uuid.uuid4()}/rounds/{big}", "number"),
    ):
        r = await client.get(url, headers=headers)
        assert r.status_code == 422, (url, r.text)
        assert r.json()["error"]["details"]["errors"][0]["field"] == name, (url, r.text)
    r = await client.get(f"{V1}/events", headers={**headers, "Last-Event-ID": big})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["field"] == "Last-Event-ID"
    r = await client.get(f"{V1}/tasks?offset={2**63 - 1}", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == []


async def test_every_api_route_reads_json_through_the_one_parser(container: Container) -> None:
    app = create_app(container, run_migrations=False, start_jobs=False)

    def walk(routes: list[Any]) -> Iterator[APIRoute]:
        for route in routes:
            if isinstance(route, APIRoute):
                yield route
            # An included router (FastAPI keeps the router it was given) or a mount.
            inner = getattr(route, "original_router", route)
            yield from walk(getattr(inner, "routes", []))

    docs = {"/docs", "/docs/oauth2-redirect", "/redoc"}  # FastAPI's pages; no bodies
    routes = [r for r in walk(app.router.routes) if r.path not in docs]
    assert len(routes) > 100
    assert [r.path for r in routes if not isinstance(r, JsonRoute)] == []


async def test_malformed_headers_and_stream_lines_answer_below_500(
    client: httpx.AsyncClient,
) -> None:
    user = await sign_in(client, ALICE)
    runner, _ = await register_runner(client, user, "sweep-headers")
    cid = await _upload(client, user, b"hello world" * 100)
    failures: list[str] = []

    async def send(method: str, url: str, what: str, **kwargs: Any) -> None:
        _check(await client.request(method, url, **kwargs), what, failures)

    for auth in (
        "Bearer",
        "Bearer ",
        "Bearer x",
        "Basic abc",
        "Bearer " + "x" * 10_000,
        user,  # no scheme
        "Bearer ps_run_" + "0" * 64,
        "Bearer ps_key_x",
        "Bearer eyJhbGciOiJub25lIn0.e30.",
    ):
        for method, url in (
            ("GET", f"{V1}/auth/me"),
            ("GET", "/v1/models"),
            ("GET", "/ollama/api/tags"),
            ("POST", f"{V1}/runners/tasks/claim?wait=0"),
        ):
            await send(method, url, f"{url} auth {auth[:20]}", headers={"Authorization": auth})
    for wanted in (
        "bytes=abc",
        "bytes=10-5",
        "bytes=99999999999999999999999-",
        "bytes=-0",
        "bytes=-99999999999999999999",
        "bytes=0-0,2-3",
        "items=0-1",
        "bytes=",
        "bytes=--1",
    ):
        for extra in ({}, {"If-Range": "x"}):
            headers = {**bearer(user), "Range": wanted, **extra}
            await send("GET", f"{V1}/storage/download/{cid}", f"range {wanted}", headers=headers)
    for key in ("", " ", "x" * 10_000, "a\tb"):
        await send(
            "POST",
            f"{V1}/tasks",
            f"idempotency key {key[:10]!r}",
            json={"title": "t", "type": "command", "config": {"command": ["true"]}},
            headers={**bearer(user), "Idempotency-Key": key},
        )
    for last in ("abc", "-1", "9" * 40, "1e9"):
        headers = {**bearer(user), "Last-Event-ID": last}
        await send("GET", f"{V1}/events", f"Last-Event-ID {last}", headers=headers)
    for ctype in (
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
    ):
        for url in (f"{V1}/tasks", f"{V1}/llm/prompts", "/v1/chat/completions", f"{V1}/webhooks"):
            headers = {**bearer(user), "content-type": ctype}
            await send("POST", url, f"{url} as {ctype}", content=b'{"title": "t"}', headers=headers)
    for files in ({"file": ("", b"")}, {"other": ("a", b"x")}, {"file": ("a" * 5000, b"x")}):
        await send("POST", f"{V1}/storage/upload", f"upload {list(files)}", files=files,
                   headers=bearer(user))  # fmt: skip
    for line in (b"garbage\n", b'{"t": 1}\n', b"\xff\xfe\n", b'{"token": "\\ud800"}\n'):
        await send(
            "POST",
            f"{V1}/runners/tasks/{ZERO_UUID}/stream",
            f"stream line {line!r}",
            content=line,
            headers={**bearer(runner), "X-Claim-Token": "x" * 20},
        )
    assert not failures, "\n".join(failures[:30])
