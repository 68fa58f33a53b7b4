"""Streams that end without their end, in process, with pricing on (ARCHITECTURE §4 streaming
leg, §6 metering), on SQLite and PostgreSQL:

- the runner's stream connection is lost after some deltas (a runner killed outright sends no
  ``fail``): the client gets its error event at once, the prompt fails with the reason, the
  relayed text is billed once, and a later report of that claim posts nothing more;
- the client hangs up before its first token: the prompt is cancelled on the runner and nothing
  is billed.

Both speak ASGI to the app directly: the test transport cannot lose a connection, a server
does so by answering ``receive()`` with ``http.disconnect``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from parity.core.llm.metering import estimate_prompt_tokens, estimate_text_tokens
from parity.core.llm.request import parse_llm_config
from parity.ledger.models import Posting, Reservation
from tests.conftest import bearer, until
from tests.integration.queue_helpers import act
from tests.integration.test_gateway_api import claim_when_routed, sse_events
from tests.integration.test_llm_api import Net, net, tick
from tests.integration.test_llm_partial_billing import cost, paid, read, setup

__all__ = ["net"]  # a fixture, used by name

V1 = "/api/v1"
MESSAGES = [{"role": "user", "content": "Say hello"}]
Message = dict[str, Any]


async def call_asgi(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    chunks: list[bytes],
    hang_up: Callable[[], Awaitable[object]],
    sent: list[Message],
    *,
    whole: bool,
) -> None:
    """One request straight to the app: the body in ``chunks`` (``whole``: the last one ends it,
    else it never ends); once they are read, the connection is lost when ``hang_up()`` returns.
    ASGI spec 2.4, as servers that leave disconnect detection to the app (Starlette then never
    listens for it on its own)."""
    transport = http._transport
    assert isinstance(transport, httpx.ASGITransport)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("parity.test", 80),
        "client": ("127.0.0.1", 123),
    }
    body = list(chunks)

    async def receive() -> Message:
        if body:
            chunk = body.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": not (whole and not body)}
        await hang_up()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await transport.app(scope, receive, send)


def body_of(sent: list[Message]) -> str:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()


async def at_once() -> None:
    return None


async def stream_then_break(
    net: Net, runner: str, task_id: str, token: str, deltas: list[str]
) -> None:
    """The runner's stream: ``deltas``, then its connection is lost before the body's end."""
    chunks = [(json.dumps({"delta": d}) + "\n").encode() for d in deltas]
    headers = {**bearer(runner), "X-Claim-Token": token, "Content-Type": "application/x-ndjson"}
    path = f"{V1}/runners/tasks/{task_id}/stream"
    await call_asgi(net.http, "POST", path, headers, chunks, at_once, [], whole=False)


GATEWAYS = [
    pytest.param("/v1/chat/completions", id="openai"),
    pytest.param("/ollama/api/chat", id="ollama"),
]


@pytest.mark.parametrize("path", GATEWAYS)
async def test_a_runner_whose_stream_breaks_mid_stream_fails_the_prompt_and_is_billed_once(
    net: Net, path: str
):
    key, runner = await setup(net)
    body = {"model": "m1", "messages": MESSAGES, "stream": True, "max_tokens": 50}
    if path.startswith("/ollama"):
        body = {"model": "m1", "messages": MESSAGES, "options": {"num_predict": 50}}
    answer = asyncio.create_task(net.http.post(path, json=body, headers=bearer(key)))
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]

    await stream_then_break(net, runner, task_id, token, ["Hel", "lo"])

    # No report from the runner, and no lease expiry (the clock stands still): the error
    # event comes from the broken stream alone.
    text = (await asyncio.wait_for(answer, 20)).text
    if path.startswith("/ollama"):
        lines = [json.loads(x) for x in text.splitlines()]
        assert [x["message"]["content"] for x in lines[:-1]] == ["Hel", "lo"]
        assert "stream broke off" in lines[-1]["error"]
    else:
        events = sse_events(text)
        assert events[-1] == "[DONE]" and "stream broke off" in events[-2]["error"]["message"]
        deltas = [e["choices"][0]["delta"].get("content") for e in events[:-2]]
        assert [d for d in deltas if d] == ["Hel", "lo"]
    p = await read(net, key, task_id)
    assert (p["status"], p["attempts"]) == ("failed", 1)
    assert "stream broke off after 2 token deltas" in p["error"]

    # Billed for what was delivered: the input and the relayed text, both estimated.
    request = parse_llm_config({"model": "m1", "messages": MESSAGES, "max_tokens": 50})
    delivered = (estimate_prompt_tokens(request), estimate_text_tokens("Hello"))
    assert (p["usage"]["input_tokens"], p["usage"]["output_tokens"]) == delivered
    assert p["usage"]["partial"] is True
    assert await paid(net, task_id) == cost(*delivered)
    [res] = await net.rows(Reservation, source_id=task_id)
    assert res.status == "consumed" and res.amount > cost(*delivered)

    # The runner was only cut off and reports later: a fail is answered, a complete refused,
    # and neither posts again.
    r = await act(net.http, runner, task_id, "fail", token, error="backend died",
                  output="Hello there", usage={"input_tokens": 9, "output_tokens": 3})  # fmt: skip
    assert (r.status_code, r.json()["status"]) == (200, "failed")
    r = await act(net.http, runner, task_id, "complete", token, output="Hello there",
                  usage={"input_tokens": 9, "output_tokens": 3})  # fmt: skip
    assert r.status_code == 409, r.text
    assert await tick(net.container) == 0
    assert len(await net.rows(Posting, source_id=task_id)) == 1
    assert await paid(net, task_id) == cost(*delivered)


async def test_a_stream_broken_before_its_first_delta_leaves_the_prompt_to_failover(net: Net):
    key, runner = await setup(net)
    body = {"model": "m1", "messages": MESSAGES, "stream": True, "max_tokens": 50}
    answer = asyncio.create_task(
        net.http.post("/v1/chat/completions", json=body, headers=bearer(key))
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    await stream_then_break(net, runner, task_id, token, [])
    assert (await read(net, key, task_id))["status"] == "processing"  # still the runner's
    # The runner fails before any token: re-routed, nothing billed.
    r = await act(net.http, runner, task_id, "fail", token, error="backend down")
    assert (r.status_code, r.json()["status"]) == (200, "pending")
    assert await net.rows(Posting, source_id=task_id) == []
    answer.cancel()
    await asyncio.gather(answer, return_exceptions=True)


HANG_UPS = [
    pytest.param("/v1/completions", {"prompt": "Say hello", "stream": True}, id="openai"),
    pytest.param("/ollama/api/generate", {"prompt": "Say hello"}, id="ollama"),
]


@pytest.mark.parametrize(("path", "extra"), HANG_UPS)
async def test_a_client_hanging_up_before_its_first_token_cancels_the_prompt_unbilled(
    net: Net, path: str, extra: dict[str, Any]
):
    key, runner = await setup(net)
    gone = asyncio.Event()
    sent: list[Message] = []
    body = json.dumps({"model": "m1", **extra}).encode()
    headers = {**bearer(key), "Content-Type": "application/json"}
    client = asyncio.create_task(
        call_asgi(net.http, "POST", path, headers, [body], gone.wait, sent, whole=True)
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    assert body_of(sent) == ""  # nothing written yet: no token came

    gone.set()  # the client hangs up while it waits for the first token

    async def cancel_requested() -> bool:
        r = await act(net.http, runner, task_id, "lease", token)
        return r.status_code == 200 and bool(r.json()["cancel_requested"])

    await until(cancel_requested)
    await asyncio.wait_for(client, 20)  # the response ended with the connection
    assert "[DONE]" not in body_of(sent)
    # The runner stops before producing anything and acknowledges.
    r = await act(net.http, runner, task_id, "fail", token, error="cancelled")
    assert (r.status_code, r.json()["status"]) == (200, "cancelled")
    assert await net.rows(Posting, source_id=task_id) == []
    [res] = await net.rows(Reservation, source_id=task_id)
    assert res.status == "released"
    p = await read(net, key, task_id)
    assert p["status"] == "failed" and p["cost"] in (None, "0")
