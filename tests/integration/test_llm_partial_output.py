"""A client billed for part of an answer sees that part, and what it was billed for it, wherever
it reads the prompt (ARCHITECTURE §4 streaming leg, §6 metering), on SQLite and PostgreSQL:

- the runner's stream connection is lost after some deltas (a runner killed outright, no
  report): the prompt's read (``/api/v1/llm/prompts/{id}`` and its ``/api/llm`` mirror), its
  list and the billing metrics show the relayed text as ``response``, the billed tokens as
  ``usage`` (``partial: true``) and the cost the ledger posted; with pricing off the same
  metering, stored when the stream breaks;
- the client disconnects mid-stream: the same, for the text relayed to it before it left;
- the OpenAPI schema says so;
- ``parity-server llm prompt --stream`` against a server process: a stream that breaks off after
  its first token prints the part, then the tokens and cost billed for it, then its error."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parity.container import Container
from parity.core.llm.metering import estimate_prompt_tokens, estimate_text_tokens
from parity.core.llm.request import parse_llm_config
from parity.ledger.models import Posting
from tests.conftest import ALICE, BOB, bearer, sign_in, until
from tests.e2e.procs import ServerProcess
from tests.integration.cli_support import cli_env, cli_for, register_runner
from tests.integration.queue_helpers import act
from tests.integration.test_gateway_api import api_key, claim_when_routed, sse_events
from tests.integration.test_llm_api import Net, llm_runner, model, net, tick
from tests.integration.test_llm_partial_billing import cost, paid, setup
from tests.integration.test_llm_stream_breaks import Message, at_once, body_of, call_asgi

__all__ = ["net"]  # a fixture, used by name

V1 = "/api/v1"
MESSAGES = [{"role": "user", "content": "Say hello"}]
CHAT = {"model": "m1", "messages": MESSAGES, "stream": True, "max_tokens": 50}
# The server process of the command-line test listens on one of these.
CLI_PORTS = range(18130, 18140)


async def break_stream(
    http: httpx.AsyncClient, runner: str, task_id: str, token: str, deltas: list[str]
) -> None:
    """The runner's stream: ``deltas``, then its connection is lost before the body's end."""
    chunks = [(json.dumps({"delta": d}) + "\n").encode() for d in deltas]
    headers = {**bearer(runner), "X-Claim-Token": token, "Content-Type": "application/x-ndjson"}
    path = f"{V1}/runners/tasks/{task_id}/stream"
    await call_asgi(http, "POST", path, headers, chunks, at_once, [], whole=False)


async def get(http: httpx.AsyncClient, key: str, path: str, **params: Any) -> Any:
    r = await http.get(path, headers=bearer(key), params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def shown(http: httpx.AsyncClient, key: str, prompt_id: str) -> dict[str, Any]:
    """The prompt as every read of it shows it: its read, its /api mirror and its list item
    agree; the billing metrics count its billed tokens and cost (the only prompt there)."""
    p: dict[str, Any] = await get(http, key, f"{V1}/llm/prompts/{prompt_id}")
    assert await get(http, key, f"/api/llm/prompts/{prompt_id}") == p
    listed = (await get(http, key, f"{V1}/llm/prompts"))["prompts"]
    assert [x for x in listed if x["id"] == prompt_id] == [p]
    metrics = (await get(http, key, f"{V1}/llm/billing/metrics"))["total"]
    usage = p["usage"]
    assert usage is not None, p
    assert (metrics["input_tokens"], metrics["output_tokens"], metrics["cost"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
        p["cost"],
    )
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    return p


async def test_a_runner_killed_mid_stream_shows_the_billed_part_wherever_the_prompt_is_read(
    net: Net,
) -> None:
    key, runner = await setup(net)
    answer = asyncio.create_task(
        net.http.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]

    await break_stream(net.http, runner, task_id, token, ["Hel", "lo"])

    events = sse_events((await asyncio.wait_for(answer, 20)).text)
    assert "stream broke off" in events[-2]["error"]["message"]
    p = await shown(net.http, key, task_id)
    assert (p["status"], p["response"], p["usage"]["partial"]) == ("failed", "Hello", True)
    assert "stream broke off after 2 token deltas" in p["error"]
    request = parse_llm_config({"model": "m1", "messages": MESSAGES, "max_tokens": 50})
    billed = (estimate_prompt_tokens(request), estimate_text_tokens("Hello"))
    assert (p["usage"]["input_tokens"], p["usage"]["output_tokens"]) == billed
    # What is shown is what the ledger posted, once.
    assert p["cost"] == str(await paid(net, task_id)) == str(cost(*billed))
    assert len(await net.rows(Posting, source_id=task_id)) == 1
    # The task's own read says why it failed (its text is the prompt's).
    task = await get(net.http, key, f"{V1}/tasks/{task_id}")
    assert (task["type"], task["status"]) == ("llm", "failed")
    assert task["last_error"] == p["error"]
    assert await tick(net.container) == 0
    assert await shown(net.http, key, task_id) == p


async def test_a_client_gone_mid_stream_shows_the_billed_part_wherever_the_prompt_is_read(
    net: Net,
) -> None:
    key, runner = await setup(net)
    gone = asyncio.Event()
    sent: list[Message] = []
    headers = {**bearer(key), "Content-Type": "application/json"}
    client = asyncio.create_task(
        call_asgi(net.http, "POST", "/v1/chat/completions", headers,
                  [json.dumps(CHAT).encode()], gone.wait, sent, whole=True)
    )  # fmt: skip
    got = await claim_when_routed(net.http, runner)
    task_id, token = got["task"]["id"], got["claim_token"]
    pieces = ["The", " sea", " is"]
    still_working = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for d in pieces:
            yield (json.dumps({"delta": d}) + "\n").encode()
        await still_working.wait()  # the backend generates on; only the cancel ends this

    stream = asyncio.create_task(
        net.http.post(
            f"{V1}/runners/tasks/{task_id}/stream",
            content=body(),
            headers={**bearer(runner), "X-Claim-Token": token},
        )
    )
    await until(lambda: " is" in body_of(sent))  # every delta reached the client
    gone.set()  # then it hangs up
    await asyncio.wait_for(client, 20)
    r = await asyncio.wait_for(stream, 20)
    assert r.status_code == 200 and r.json()["cancelled"] is True, r.text
    # The runner stops and reports more than the client got: billed is what it got.
    r = await act(net.http, runner, task_id, "fail", token, error="cancelled",
                  output="The sea is wide and deep",
                  usage={"input_tokens": 12, "output_tokens": 40})  # fmt: skip
    assert (r.status_code, r.json()["status"]) == (200, "cancelled"), r.text

    p = await shown(net.http, key, task_id)
    assert (p["status"], p["error"]) == ("failed", "cancelled")
    assert (p["response"], p["usage"]["partial"]) == ("The sea is", True)
    billed = (12, estimate_text_tokens("The sea is"))
    assert (p["usage"]["input_tokens"], p["usage"]["output_tokens"]) == billed
    assert p["usage"]["reported_output_tokens"] == 40
    assert p["cost"] == str(await paid(net, task_id)) == str(cost(*billed))
    task = await get(net.http, key, f"{V1}/tasks/{task_id}")
    assert (task["type"], task["status"]) == ("llm", "cancelled")
    assert await tick(net.container) == 0
    assert await shown(net.http, key, task_id) == p


async def test_with_pricing_off_the_part_is_metered_when_the_stream_breaks(
    client: httpx.AsyncClient, container: Container
) -> None:
    key = await api_key(client, ALICE)
    runner, _ = await llm_runner(client, await sign_in(client, BOB), model("m1"))
    answer = asyncio.create_task(
        client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    )
    got = await claim_when_routed(client, runner)
    task_id, token = got["task"]["id"], got["claim_token"]

    await break_stream(client, runner, task_id, token, ["Hel", "lo"])
    await asyncio.wait_for(answer, 20)

    before = await shown(client, key, task_id)
    assert (before["response"], before["usage"]["partial"], before["cost"]) == ("Hello", True, "0")
    assert before["usage"]["output_tokens"] == estimate_text_tokens("Hello")
    assert await tick(container) == 0  # stored in the failing transaction: nothing left to meter
    assert await shown(client, key, task_id) == before


async def test_the_schema_says_a_failed_prompts_response_and_usage_are_the_billed_part(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    fields = spec["components"]["schemas"]["PromptRead"]["properties"]
    assert "usage.partial" in fields["response"]["description"]
    assert "partial" in fields["usage"]["description"]
    assert "billed" in fields["cost"]["description"]


# -- the command line ---------------------------------------------------------------------------


def _cli_port() -> int:
    for port in CLI_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {CLI_PORTS}")


@pytest.fixture(name="server")
def server_fixture(tmp_path: Path, fresh_database_url: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "home", fresh_database_url, port=_cli_port()).start()
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


def _stream_then_fail(url: str, runner_token: str, deltas: list[str], done: dict[str, Any]) -> None:
    """The runner: claim the next task, stream ``deltas``, then fail it with their text."""
    headers = {"Authorization": f"Bearer {runner_token}"}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
        got = http.post("/api/v1/runners/tasks/claim", params={"wait": 20})
        done["claim"] = got.status_code
        if got.status_code != 200:
            return
        task_id, token = got.json()["task"]["id"], got.json()["claim_token"]
        lines = [(json.dumps({"delta": d}) + "\n").encode() for d in deltas]
        r = http.post(
            f"/api/v1/runners/tasks/{task_id}/stream",
            content=iter(lines),
            headers={"X-Claim-Token": token},
        )
        done["deltas"] = r.json().get("deltas")
        body = {
            "claim_token": token,
            "error": "backend died",
            "output": "".join(deltas),
            "usage": {"input_tokens": 5, "output_tokens": len(deltas)},
        }
        done["fail"] = http.post(f"/api/v1/runners/tasks/{task_id}/fail", json=body).status_code
        done["task_id"] = task_id


def test_the_command_line_says_what_a_stream_that_broke_off_is_billed(
    server: ServerProcess,
) -> None:
    env = cli_env(server)
    runner_token = register_runner(
        server.url,
        env["PARITY_TOKEN"],
        device_id="cli-llm-partial-runner",
        models=[{"model_name": "tiny", "is_loaded": True, "max_tokens": 512}],
    )
    done: dict[str, Any] = {}
    serving = threading.Thread(
        target=_stream_then_fail, args=(server.url, runner_token, ["Par", "tial"], done)
    )
    serving.start()
    try:
        out = cli_for("llm", env)("prompt", "--model", "tiny", "--stream", "Hi")
    finally:
        serving.join(timeout=40)
    assert (done["claim"], done["deltas"], done["fail"]) == (200, 2, 200)
    assert out.exit_code == 1
    assert out.stdout == "Partial\n"  # what was delivered
    # Then the tokens and cost billed for it, then the error.
    said = out.stderr.strip().splitlines()
    billed = "billed for the partial answer: 5 input + 2 output tokens, cost 0 base units"
    assert said[-2:-1] == [billed], out.stderr
    assert said[-1].startswith("error:") and "prompt_failed" in said[-1]
    # The same as the prompt's record says.
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get(f"{V1}/llm/prompts/{done['task_id']}", headers=bearer(env["PARITY_TOKEN"]))
    p = r.json()
    assert (p["response"], p["usage"]["partial"], p["cost"]) == ("Partial", True, "0")
    assert (p["usage"]["input_tokens"], p["usage"]["output_tokens"]) == (5, 2)
