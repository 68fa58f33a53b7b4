"""The OpenAI- and Ollama-compatible gateways and the runner's streaming leg, in process, on
SQLite and PostgreSQL: response and error shapes, API keys as bearer keys, a prompt completed by
a runner the test drives through the runner API, and token deltas relayed by the StreamBus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from parity.container import Container
from parity.ledger.models import Entry, Posting
from parity.llm.streams import LocalStreamBus, StreamEvent
from tests.conftest import ALICE, BOB, bearer, sign_in, until
from tests.integration.queue_helpers import act, claim
from tests.integration.test_llm_api import Net, llm_runner, model, net

__all__ = ["net"]  # a fixture, used by name

V1 = "/api/v1"


async def api_key(http: httpx.AsyncClient, account: Any) -> str:
    token = await sign_in(http, account)
    r = await http.post(f"{V1}/auth/keys", json={"name": "openai"}, headers=bearer(token))
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def claim_when_routed(http: httpx.AsyncClient, runner: str) -> dict[str, Any]:
    """Claim the prompt routed to ``runner`` once the gateway submitted it. Polls the read-only
    ``available`` list, so the polling never holds the runner's row while routing locks it."""

    async def offered() -> bool:
        r = await http.get(f"{V1}/runners/tasks/available", headers=bearer(runner))
        return r.status_code == 200 and bool(r.json())

    await until(offered)
    r = await claim(http, runner, start=True)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def stream_deltas(
    http: httpx.AsyncClient, runner: str, task_id: str, token: str, deltas: list[str]
) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for d in deltas:
            yield (json.dumps({"delta": d}) + "\n").encode()

    return await http.post(
        f"{V1}/runners/tasks/{task_id}/stream",
        content=body(),
        headers={**bearer(runner), "X-Claim-Token": token},
    )


def sse_events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def setup(client: httpx.AsyncClient) -> tuple[str, str]:
    """An API key of Alice and a runner token of Bob's runner serving m1."""
    key = await api_key(client, ALICE)
    bob = await sign_in(client, BOB)
    runner, _ = await llm_runner(client, bob, model("m1", context_length=4096))
    return key, runner


CHAT = {"model": "m1", "messages": [{"role": "user", "content": "Say hello"}]}


# -- shapes, auth, errors ------------------------------------------------------------------------


async def test_models_are_listed_in_openai_and_ollama_shapes(client: httpx.AsyncClient):
    key, _ = await setup(client)
    r = await client.get("/v1/models", headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "list"
    assert [(m["id"], m["object"]) for m in r.json()["data"]] == [("m1", "model")]
    r = await client.get("/ollama/api/tags", headers=bearer(key))
    assert [m["name"] for m in r.json()["models"]] == ["m1"]


async def test_an_invalid_key_is_401_in_openai_error_shape(client: httpx.AsyncClient):
    r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-nope"))
    assert r.status_code == 401
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "invalid_api_key"
    r = await client.get("/ollama/api/tags")
    assert r.status_code == 401 and isinstance(r.json()["error"], str)


async def test_invalid_requests_name_the_param_and_unknown_models_are_404(
    client: httpx.AsyncClient,
):
    key, _ = await setup(client)
    cases = [
        ({"model": "m1"}, "messages"),
        ({**CHAT, "n": 2}, "n"),
        ({**CHAT, "temperature": 7}, "temperature"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ]
    for body, param in cases:
        r = await client.post("/v1/chat/completions", json=body, headers=bearer(key))
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = await client.post("/v1/chat/completions", content=b"{not json", headers=bearer(key))
    assert (r.status_code, r.json()["error"]["param"]) == (400, "body")
    for body in ({**CHAT, "model": "nope"}, {**CHAT, "model": "nope", "stream": True}):
        r = await client.post("/v1/chat/completions", json=body, headers=bearer(key))
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found"), r.text
        assert "`nope`" in r.json()["error"]["message"]
    r = await client.post(
        "/v1/completions", json={"model": "m1", "prompt": ["a", "b"]}, headers=bearer(key)
    )
    assert (r.status_code, r.json()["error"]["param"]) == (400, "prompt")
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    r = await client.post("/ollama/api/chat", json=body, headers=bearer(key))
    assert r.status_code == 404 and "`nope`" in r.json()["error"], r.text
    # A refused request wrote nothing: no prompt, no task.
    r = await client.get("/api/v1/llm/prompts", headers=bearer(key))
    assert r.status_code == 200 and r.json()["total"] == 0, r.text
    r = await client.get("/api/v1/tasks", headers=bearer(key))
    assert r.status_code == 200 and r.json() == [], r.text


async def test_the_server_api_and_the_gateway_do_not_collide(client: httpx.AsyncClient):
    key, _ = await setup(client)
    assert (await client.get(f"{V1}/llm/models", headers=bearer(key))).status_code == 200
    assert (await client.get("/v1/models", headers=bearer(key))).status_code == 200
    # The legacy prompts endpoint still refuses to stream (the gateway is where streams are).
    r = await client.post(
        f"{V1}/llm/prompts", json={"model": "m1", "prompt": "x", "stream": True},
        headers=bearer(key),
    )  # fmt: skip
    assert r.status_code == 422


# -- a prompt completed by a runner ----------------------------------------------------------------


async def test_a_chat_completion_waits_for_the_runner_and_answers_openai_shape(
    client: httpx.AsyncClient,
):
    key, runner = await setup(client)
    answer = asyncio.create_task(
        client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    assert got["task"]["config"].get("stream") is not True  # nobody streams it
    usage = {"input_tokens": 7, "output_tokens": 2, "finish_reason": "length"}
    r = await act(client, runner, got["task"]["id"], "complete", got["claim_token"],
                  output="Hi there", usage=usage)  # fmt: skip
    assert r.status_code == 200, r.text
    r = await asyncio.wait_for(answer, 20)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "m1"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hi there"}
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


async def test_a_streamed_chat_relays_the_runners_deltas_then_usage_and_done(
    client: httpx.AsyncClient, container: Container
):
    key, runner = await setup(client)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    answer = asyncio.create_task(
        client.post("/v1/chat/completions", json=body, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert got["task"]["config"]["stream"] is True
    assert await container.streams.subscribers(task_id) == 1
    r = await stream_deltas(client, runner, task_id, token, ["Hel", "lo", " world"])
    assert r.status_code == 200, r.text
    assert r.json() == {"deltas": 3, "listeners": 1}
    usage = {"input_tokens": 4, "output_tokens": 3, "finish_reason": "stop"}
    r = await act(client, runner, task_id, "complete", token, output="Hello world", usage=usage)
    assert r.status_code == 200, r.text
    r = await asyncio.wait_for(answer, 20)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert [t for t in texts if t] == ["Hel", "lo", " world"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert await container.streams.subscribers(task_id) == 0


async def test_text_the_stream_missed_is_sent_from_the_stored_result(client: httpx.AsyncClient):
    key, runner = await setup(client)
    body = {"model": "m1", "prompt": "Once", "stream": True}
    answer = asyncio.create_task(client.post("/v1/completions", json=body, headers=bearer(key)))
    got = await claim_when_routed(client, runner)
    # The runner streams nothing (an old runner): the whole text comes with the completion.
    r = await act(client, runner, got["task"]["id"], "complete", got["claim_token"],
                  output="upon a time", usage={"input_tokens": 1, "output_tokens": 3})  # fmt: skip
    assert r.status_code == 200, r.text
    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "upon a time"
    assert all(e["object"] == "text_completion" for e in events[:-1])


async def test_a_runner_failing_after_its_first_token_gives_an_error_event_and_cancels(
    client: httpx.AsyncClient,
):
    key, runner = await setup(client)
    body = {**CHAT, "stream": True}
    answer = asyncio.create_task(
        client.post("/v1/chat/completions", json=body, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert (await stream_deltas(client, runner, task_id, token, ["Par"])).status_code == 200
    r = await act(client, runner, task_id, "fail", token, error="backend died",
                  usage={"input_tokens": 4, "output_tokens": 1})  # fmt: skip
    assert r.status_code == 200, r.text
    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    assert events[-1] == "[DONE]"
    assert "error" in events[-2] and events[-2]["error"]["message"]
    texts = [e["choices"][0]["delta"].get("content") for e in events[:-2] if "choices" in e]
    assert [t for t in texts if t] == ["Par"]

    async def ended() -> bool:
        r = await client.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))
        return bool(r.json()["status"] == "failed")

    await until(ended)  # not re-run: the client already saw part of an answer


async def test_the_stream_endpoint_is_fenced_by_the_claim_token(client: httpx.AsyncClient):
    key, runner = await setup(client)
    answer = asyncio.create_task(
        client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    r = await stream_deltas(client, runner, task_id, "x" * 40, ["no"])
    assert r.status_code in (403, 409), r.text
    r = await client.post(
        f"{V1}/runners/tasks/{task_id}/stream", content=b"", headers=bearer(runner)
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "X-Claim-Token"
    r = await stream_deltas(client, runner, task_id, token, ["ok"])
    assert r.status_code == 200
    r = await client.post(
        f"{V1}/runners/tasks/{task_id}/stream", content=b'{"text": 1}\n',
        headers={**bearer(runner), "X-Claim-Token": token},
    )  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "delta"
    await act(client, runner, task_id, "complete", token, output="ok",
              usage={"input_tokens": 1, "output_tokens": 1})  # fmt: skip
    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    assert events[-1] == "[DONE]"


# -- Ollama ----------------------------------------------------------------------------------------


async def test_ollama_generate_answers_one_object_and_chat_streams_ndjson(
    client: httpx.AsyncClient,
):
    key, runner = await setup(client)
    body = {"model": "m1", "prompt": "Hi", "stream": False, "options": {"num_predict": 5}}
    answer = asyncio.create_task(
        client.post("/ollama/api/generate", json=body, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    assert got["task"]["config"]["max_tokens"] == 5
    await act(client, runner, got["task"]["id"], "complete", got["claim_token"],
              output="Hello!", usage={"input_tokens": 2, "output_tokens": 2})  # fmt: skip
    one = (await asyncio.wait_for(answer, 20)).json()
    assert (one["response"], one["done"], one["prompt_eval_count"], one["eval_count"]) == (
        "Hello!", True, 2, 2,
    )  # fmt: skip

    body = {"model": "m1", "messages": [{"role": "user", "content": "Hi"}]}
    answer = asyncio.create_task(client.post("/ollama/api/chat", json=body, headers=bearer(key)))
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert (await stream_deltas(client, runner, task_id, token, ["Yo", "!"])).status_code == 200
    await act(client, runner, task_id, "complete", token, output="Yo!",
              usage={"input_tokens": 3, "output_tokens": 2})  # fmt: skip
    r = await asyncio.wait_for(answer, 20)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [x["message"]["content"] for x in lines if not x["done"]] == ["Yo", "!"]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 2
    assert lines[-1]["prompt_eval_count"] == 3


# -- the bus ---------------------------------------------------------------------------------------


async def test_a_subscriber_that_falls_behind_is_cut_off_with_an_overflow_event():
    bus = LocalStreamBus(buffer=2)
    async with bus.subscribe("k") as sub:
        assert await bus.publish("k", StreamEvent("delta", 1, "a")) == 1
        assert await bus.publish("k", StreamEvent("delta", 1, "b")) == 1
        assert await bus.publish("k", StreamEvent("delta", 1, "c")) == 0  # full: cut off
        first = await sub.next(1)
        assert first is not None and first.kind == "overflow"
        assert await sub.next(0.01) is None
    assert await bus.subscribers("k") == 0
    assert await bus.publish("k", StreamEvent("delta", 1, "d")) == 0


# -- billing -----------------------------------------------------------------------------------


async def test_with_pricing_on_the_streamed_usage_is_what_the_ledger_billed(net: Net):
    key = await api_key(net.http, ALICE)
    bob = await sign_in(net.http, BOB)
    await net.stake(ALICE, 100_000)
    runner, _ = await llm_runner(net.http, bob, model("m1", price=(1000, 2000)))
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 50}
    answer = asyncio.create_task(
        net.http.post("/v1/chat/completions", json=body, headers=bearer(key))
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert (await stream_deltas(net.http, runner, task_id, token, ["Hi", "!"])).status_code == 200
    r = await act(net.http, runner, task_id, "complete", token, output="Hi!",
                  usage={"input_tokens": 12, "output_tokens": 3})  # fmt: skip
    assert r.status_code == 200, r.text
    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    usage = events[-2]["usage"]
    assert usage == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    # ceil((12 * 1000 + 3 * 2000) / 1000) = 18, paid once by the key's owner.
    [posting] = await net.rows(Posting, source_id=task_id)
    by_role = {e.role: e.amount for e in await net.rows(Entry, posting_id=posting.id)}
    assert by_role["payer"] == -18
    p = (await net.http.get(f"{V1}/llm/prompts/{task_id}", headers=bearer(key))).json()
    assert p["cost"] == "18"
    assert (p["usage"]["input_tokens"], p["usage"]["output_tokens"]) == (12, 3)


async def test_every_malformed_stream_line_is_422_and_the_client_stream_stays_whole(
    client: httpx.AsyncClient,
):
    key, runner = await setup(client)
    answer = asyncio.create_task(
        client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    headers = {**bearer(runner), "X-Claim-Token": token}
    for line in (
        b'{"delta": "\\ud800"}',  # half a surrogate pair: not text
        b'{"delta": "a\\udfffb"}',
        b'{"delta": NaN}',
        b'{"delta": 1e999}',
        b'{"delta": ["a"]}',
        b'{"delta": {"text": "a"}}',
        b'{"delta": null}',
        b'"just text"',
        b"[1, 2]",
        b"\xff\xfe",
        b"{",
    ):
        r = await client.post(
            f"{V1}/runners/tasks/{task_id}/stream", content=line + b"\n", headers=headers
        )
        assert r.status_code == 422, (line, r.text)
        assert r.json()["error"]["details"]["field"] == "delta", (line, r.text)
    r = await stream_deltas(client, runner, task_id, token, ["Hello", " \U0001f600"])
    assert r.status_code == 200, r.text
    await act(client, runner, task_id, "complete", token, output="Hello \U0001f600",
              usage={"input_tokens": 3, "output_tokens": 2})  # fmt: skip
    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    assert events[-1] == "[DONE]"
    text = "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events[:-1]
        if isinstance(e, dict) and e.get("choices")
    )
    assert text == "Hello \U0001f600"
