"""A claim handed to a waiting long-poll by the transaction that creates a prompt's task
(``tasks.handoff``): answered like any claim, without a claim transaction of its own; a
rollback frees the long-poll; a long-poll gone before the commit has its claim given back."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import select

from parity.auth.schemas import Principal
from parity.container import Container
from parity.llm import service as llm
from parity.llm.schemas import PromptCreate
from parity.tasks.models import Task, TaskAttempt
from tests.conftest import ALICE, BOB, sign_in, until
from tests.integration.queue_helpers import act, claim
from tests.integration.test_llm_api import llm_runner, model, prompt, submitted


def _polling(
    client: httpx.AsyncClient, runner: str, wait: float = 10
) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(claim(client, runner, wait=wait, start=True))


async def _row(c: Container, task_id: str) -> tuple[Task, list[TaskAttempt]]:
    async with c.db.read_session() as s:
        task = (await s.scalars(select(Task).where(Task.id == uuid.UUID(task_id)))).one()
        attempts = list(await s.scalars(select(TaskAttempt).where(TaskAttempt.task_id == task.id)))
    return task, attempts


async def test_a_waiting_long_poll_is_handed_the_new_prompts_claim(
    client: httpx.AsyncClient, container: Container
):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    runner, runner_id = await llm_runner(client, bob, model("m1"))
    poll = _polling(client, runner)
    await until(lambda: container.wakeups.can_take(uuid.UUID(runner_id)))  # inside its wait

    p = await submitted(client, alice, max_tokens=16)
    r = await poll
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["task"]["id"], got["task"]["status"], got["attempt"]) == (p["id"], "running", 1)
    assert container.wakeups.handed == 1
    assert p["status"] == "processing"  # the submit's own answer shows the claim

    task, attempts = await _row(container, p["id"])
    assert (str(task.runner_id), task.status, task.attempts) == (runner_id, "running", 1)
    assert [(a.attempt, str(a.runner_id), a.started_at is not None) for a in attempts] == [
        (1, runner_id, True)
    ]
    # The claim is the queue's: its token completes the task, and the prompt with it.
    r = await act(client, runner, p["id"], "complete", got["claim_token"], output="hello")
    assert r.status_code == 200, r.text
    assert (await prompt(client, alice, p["id"]))["status"] == "completed"


async def test_no_handoff_without_a_waiting_long_poll_or_a_free_slot(
    client: httpx.AsyncClient, container: Container
):
    alice, bob = await sign_in(client, ALICE), await sign_in(client, BOB)
    runner, _ = await llm_runner(client, bob, model("m1"), slots=1)
    first = await submitted(client, alice, max_tokens=16)  # nobody waits: offered, pending
    task, _ = await _row(container, first["id"])
    assert task.status == "pending" and container.wakeups.handed == 0
    r = await claim(client, runner, start=True)
    assert r.status_code == 200 and r.json()["task"]["id"] == first["id"]

    # Its one slot is taken: a long-poll waits, but the claim a handoff makes is refused.
    poll = _polling(client, runner, wait=0.5)
    await asyncio.sleep(0.1)
    second = await submitted(client, alice, max_tokens=16)
    assert (await poll).status_code == 204
    task, attempts = await _row(container, second["id"])
    assert (task.status, attempts, container.wakeups.handed) == ("pending", [], 0)


async def test_a_rollback_frees_the_long_poll_and_a_gone_long_poll_gives_the_claim_back(
    client: httpx.AsyncClient, container: Container
):
    await sign_in(client, ALICE)  # the prompts' creator
    _, runner_id = await llm_runner(client, await sign_in(client, BOB), model("m1"))
    rid = uuid.UUID(runner_id)
    principal = Principal(ALICE.address, "session", uuid.uuid4(), False)
    body = PromptCreate(model_name="m1", prompt="hi", max_tokens=8)
    hub = container.wakeups

    # A transaction that claims for the waiting long-poll, then fails: nothing was handed and
    # the long-poll may be reserved again.
    with hub.taking(rid, start=True) as taker:
        waiting = asyncio.create_task(taker.wait(5))
        await asyncio.sleep(0.02)
        try:
            async with container.db.transaction() as s:
                row = await llm.submit(s, container.llm, principal, body)
                assert row.status == "running"  # claimed in this transaction
                raise RuntimeError("the unit of work fails after the claim")
        except RuntimeError:
            pass
        assert await taker.take() is None and taker.outcome is None
        assert hub.reserve(rid) is not None  # free again
        waiting.cancel()

    # The long-poll goes away (its runner hung up) before the commit: the claim is given back
    # untouched.
    polling = hub.taking(rid, start=True)
    taker = polling.__enter__()
    waiting = asyncio.create_task(taker.wait(5))
    await asyncio.sleep(0.02)
    async with container.db.transaction() as s:
        row = await llm.submit(s, container.llm, principal, body)
        task_id = str(row.prompt.id)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        polling.__exit__(None, None, None)
    assert taker.closed and hub.handed == 0

    async def released() -> bool:
        task, attempts = await _row(container, task_id)
        return task.status == "pending" and [a.outcome for a in attempts] == ["released"]

    await until(released)


async def test_taking_a_claim_waits_for_the_reserving_transaction(container: Container):
    """A long-poll whose wait ends while a transaction that reserved it commits takes the
    claim once the commit is through, and a handed claim never answered is given back."""
    hub = container.wakeups
    rid = uuid.uuid4()
    given_back: list[object] = []
    hub.release_orphan = lambda runner_id, c: given_back.append((runner_id, c))
    with hub.taking(rid, start=False) as taker:
        assert hub.reserve(rid) is None  # registered but not inside its wait
        waiting = asyncio.create_task(taker.wait(0.05))
        await asyncio.sleep(0.01)
        handoff = hub.reserve(rid)
        assert handoff is not None and hub.reserve(rid) is None  # one reservation at a time
        assert await waiting is False  # its wait timed out meanwhile
        taking = asyncio.create_task(taker.take())
        await asyncio.sleep(0.02)
        assert not taking.done()  # waits for the transaction's outcome
        assert handoff.deliver("claim-1")
        assert await taking == "claim-1" and hub.handed == 1
        # A second one handed and never taken: given back when the long-poll ends.
        assert await taker.wait(0) is True  # the delivery's wake-up, kept while not waiting
        waiting = asyncio.create_task(taker.wait(1))
        await asyncio.sleep(0.01)
        second = hub.reserve(rid)
        assert second is not None and second.deliver("claim-2")
        assert await waiting is True  # delivery wakes the long-poll
    assert given_back == [(rid, "claim-2")]
