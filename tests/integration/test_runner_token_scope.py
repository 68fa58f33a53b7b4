"""A runner token lives on a machine that runs other people's work: it reads what its work
needs, but it creates no work, spends nothing and mints or revokes no credentials. Each of
those routes answers 403 ``wallet_token_required``; the wallet's own session still may."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ALICE, bearer, sign_in
from tests.integration.queue_helpers import claimed, create_task, register_runner

V1 = "/api/v1"
FL_BODY: dict[str, Any] = {"name": "x"}  # refused before the body is read


async def _wallet_and_runner(client: httpx.AsyncClient) -> tuple[str, str, dict[str, Any]]:
    alice = await sign_in(client, ALICE)
    runner, _ = await register_runner(client, alice, "scope-device")
    task = await create_task(client, alice)
    return alice, runner, task


def _refused(r: httpx.Response) -> bool:
    body = r.json()
    code = body["error"]["code"]
    return r.status_code == 403 and code == "wallet_token_required"


async def test_a_runner_token_cannot_mint_or_revoke_api_keys(client: httpx.AsyncClient):
    alice, runner, _ = await _wallet_and_runner(client)
    assert _refused(
        await client.post(f"{V1}/auth/keys", json={"name": "p"}, headers=bearer(runner))
    )
    made = await client.post(f"{V1}/auth/keys", json={"name": "mine"}, headers=bearer(alice))
    assert made.status_code == 201
    key_id = made.json()["id"]
    assert _refused(await client.delete(f"{V1}/auth/keys/{key_id}", headers=bearer(runner)))
    assert (
        await client.get(f"{V1}/auth/me", headers=bearer(made.json()["key"]))
    ).status_code == 200


async def test_a_runner_cannot_cancel_or_change_the_task_it_holds(client: httpx.AsyncClient):
    alice, runner, task = await _wallet_and_runner(client)
    assert (await claimed(client, runner))["task"]["id"] == task["id"]
    # It may read the task it holds ...
    r = await client.get(f"{V1}/tasks/{task['id']}", headers=bearer(runner))
    assert r.status_code == 200
    # ... but cancelling is the owner's decision (a runner that does not want it releases it).
    assert _refused(await client.delete(f"{V1}/tasks/{task['id']}", headers=bearer(runner)))
    r = await client.put(f"{V1}/tasks/{task['id']}", json={"title": "x"}, headers=bearer(runner))
    assert _refused(r)
    status = await client.get(f"{V1}/tasks/{task['id']}/status", headers=bearer(alice))
    assert status.json()["status"] == "assigned"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", f"{V1}/tasks", {"type": "command", "config": {"command": ["true"]}}),
        ("POST", f"{V1}/llm/prompts", {"model": "m", "prompt": "hi"}),
        ("POST", "/api/llm/prompts", {"model": "m", "prompt": "hi"}),
        ("POST", f"{V1}/federated-learning/sessions", FL_BODY),
        (
            "POST",
            f"{V1}/federated-learning/sessions/00000000-0000-0000-0000-000000000001/start",
            None,
        ),
        (
            "POST",
            f"{V1}/federated-learning/sessions/00000000-0000-0000-0000-000000000001/cancel",
            None,
        ),
    ],
)
async def test_a_runner_token_creates_no_paid_work(
    client: httpx.AsyncClient, method: str, path: str, body: Any
):
    _, runner, _ = await _wallet_and_runner(client)
    r = await client.request(method, path, json=body, headers=bearer(runner))
    assert _refused(r), r.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": "m", "prompt": "hi"}),
        ("/ollama/api/chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ("/ollama/api/generate", {"model": "m", "prompt": "hi"}),
    ],
)
async def test_the_gateways_refuse_a_runner_token(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
):
    _, runner, _ = await _wallet_and_runner(client)
    r = await client.post(path, json=body, headers=bearer(runner))
    assert r.status_code == 403, r.text
    assert "wallet session or API key" in r.text
