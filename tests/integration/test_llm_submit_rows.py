"""What a prompt's submit writes, on SQLite and PostgreSQL (where it is one statement): the
``llm`` task row, the prompt row, the offer's push, the task's events in order and one webhook
delivery per subscribed endpoint of the creator (ARCHITECTURE §4)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import select

from parity.container import Container
from parity.events.models import Event, WebhookDelivery
from parity.llm.models import Prompt
from parity.tasks.models import RunnerPush, Task
from tests.conftest import ALICE, BOB, bearer, sign_in
from tests.integration.queue_helpers import V1, custom_client, device
from tests.integration.test_llm_api import submitted


async def _hook(client: httpx.AsyncClient, token: str, events: list[str]) -> str:
    body = {"url": "http://127.0.0.1:9/hook", "events": events}
    r = await client.post(f"{V1}/webhooks", json=body, headers=bearer(token))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _rows(c: Container, task_id: str) -> tuple[Task, Prompt, list[Event], list[Any]]:
    async with c.db.read_session() as s:
        task = (await s.scalars(select(Task).where(Task.id == uuid.UUID(task_id)))).one()
        prompt = (await s.scalars(select(Prompt))).one()
        events = list(
            await s.scalars(select(Event).where(Event.resource_id == task_id).order_by(Event.seq))
        )
        deliveries = list((await s.execute(select(WebhookDelivery))).scalars())
    return task, prompt, events, deliveries


async def test_a_routed_submit_writes_task_prompt_push_events_and_deliveries(
    container: Container,
):
    async with custom_client(container, webhook_allow_private=True) as (client, c):
        alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
        mine = await _hook(client, alice, ["task.created", "task.offered"])
        await _hook(client, alice, ["task.completed"])  # not subscribed to these
        await _hook(client, bob, ["task.created"])  # someone else's
        model = {"model_name": "m1", "is_loaded": True, "max_tokens": 4096}
        body = {"device_id": device(), "webhook": "http://127.0.0.1:9/push", "models": [model]}
        r = await client.post(f"{V1}/runners", json=body, headers=bearer(alice))
        assert r.status_code == 201, r.text
        runner_id = r.json()["runner"]["id"]
        p = await submitted(client, alice, max_tokens=16)
        task, prompt, events, deliveries = await _rows(c, p["id"])
        async with c.db.read_session() as s:
            pushes = list((await s.scalars(select(RunnerPush))).all())

    assert (str(task.id), task.type, task.status, str(task.target_runner_id)) == (
        p["id"],
        "llm",
        "pending",
        runner_id,
    )
    assert (task.title, task.attempts, task.max_attempts, task.runner_id) == ("llm: m1", 0, 3, None)
    assert task.config == prompt.request and task.config["max_tokens"] == 16
    assert (prompt.task_id, str(prompt.routed_runner_id), prompt.no_route_reason) == (
        task.id,
        runner_id,
        None,
    )
    assert prompt.created_at == task.created_at and prompt.price is not None
    assert [(e.type, e.owner_address, e.data) for e in events] == [
        (
            "task.created",
            ALICE.address.lower(),
            {"task_id": p["id"], "status": "pending", "title": "llm: m1", "type": "llm"},
        ),
        (
            "task.offered",
            ALICE.address.lower(),
            {"task_id": p["id"], "status": "pending", "title": "llm: m1", "runner_id": runner_id},
        ),
    ]
    assert sorted((str(d.endpoint_id), d.event_id, d.status) for d in deliveries) == sorted(
        (mine, e.id, "pending") for e in events
    )
    assert [(str(x.runner_id), str(x.task_id), x.payload) for x in pushes] == [
        (runner_id, p["id"], {"type": "task.offered", "task_id": p["id"], "title": "llm: m1"})
    ]


async def test_an_unrouted_submit_writes_only_the_created_event_and_no_push(
    client: httpx.AsyncClient, container: Container
):
    alice = await sign_in(client, ALICE)
    p = await submitted(client, alice)
    task, prompt, events, deliveries = await _rows(container, p["id"])
    assert (task.target_runner_id, prompt.routed_runner_id) == (None, None)
    assert prompt.no_route_reason is not None
    assert [e.type for e in events] == ["task.created"]
    assert deliveries == []
    r = await client.get(f"{V1}/llm/prompts/{p['id']}", headers=bearer(alice))
    assert r.status_code == 200, r.text
    assert r.json() == p
