"""The SecAgg+ exchange of one request per stage, in process, on SQLite and PostgreSQL: a
participant posts its stage message with ``?wait=S`` and the answer's ``reply`` carries what it
needs next once the stage closed (the neighbours' keys, the bundles sealed for it, the unmask
request), or, when the round went on without it, the long-poll's refusal. Messages of one stage
posted side by side are accepted together (one transaction for a batch), and a refused message
in a batch is refused alone. The round's result is the same: plain FedAvg within quantization
error."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from parity.clock import FrozenClock
from parity.container import Container
from parity.core.fl.secagg import KeyAdvert, UnmaskRequest
from parity.fl import secagg_accept, secagg_relay, secagg_service
from parity.fl import secagg_repository as repo
from parity.fl.models import FLRound
from parity.fl.secagg_accept import Pending
from tests.conftest import bearer, until
from tests.integration.test_fl_rounds import World, _world
from tests.integration.test_fl_secagg import (
    SECAGG,
    Party,
    advertise,
    assert_fedavg,
    b64,
    global_model,
    joined,
    secure_session,
    unb64,
)


@pytest.fixture
async def world(client: httpx.AsyncClient, container: Container, clock: FrozenClock) -> World:
    return await _world(client, container, clock)


WAIT = {"wait": 10}


async def post_waiting(
    world: World, party: Party, stage: str, body: dict[str, Any]
) -> httpx.Response:
    return await world.client.post(
        party.path(stage),
        params=WAIT,
        json={"claim_token": party.token, **body},
        headers=bearer(party.runner.token),
    )


def replies(answers: Sequence[httpx.Response], stage: str) -> list[dict[str, Any]]:
    """Each answer's ``reply``, checked to be the ready messages of ``stage``."""
    out = []
    for r in answers:
        assert r.status_code == 200, r.text
        reply = r.json()["reply"]
        assert (reply["stage"], reply["ready"]) == (stage, True), reply
        out.append(reply)
    return out


def keys_of(party: Party) -> dict[str, str]:
    advert = party.client.advertise()
    return {"c_public": b64(advert.c_public), "s_public": b64(advert.s_public)}


async def read_afresh(
    world: World, party: Party, stage: str, monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, Any]]:
    """The stage's messages for ``party`` by a long-poll that reads them from the database
    (as another replica would: nothing kept from the close)."""
    monkeypatch.setattr(secagg_relay, "RELAYS", secagg_relay.Relays())
    r = await world.client.get(
        party.path(stage),
        params={"wait": 0},
        headers={**bearer(party.runner.token), "X-Claim-Token": party.token},
    )
    assert r.status_code == 200 and r.json()["ready"], r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


async def test_each_stage_is_one_request_whose_reply_carries_the_next_messages(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    runners = await world.add_runners(3)
    s = await secure_session(world, total_rounds=1)
    sid = s["id"]
    parties = await joined(world, runners)
    # Stage 1, posted side by side: each reply has its neighbours' keys (here, everyone's).
    answers = await asyncio.gather(
        *(post_waiting(world, p, "advertise_keys", keys_of(p)) for p in parties)
    )
    for p, reply in zip(parties, replies(answers, "advertise_keys"), strict=True):
        assert {m["sender"] for m in reply["messages"]} == {q.index for q in parties} - {p.index}
        assert await read_afresh(world, p, "advertise_keys", monkeypatch) == reply["messages"]
    shares = []
    for p, reply in zip(parties, replies(answers, "advertise_keys"), strict=True):
        adverts = {
            str(m["sender"]): KeyAdvert(
                str(m["sender"]), unb64(m["c_public"]), unb64(m["s_public"])
            )
            for m in reply["messages"]
        }
        message = p.client.share_keys(adverts)
        shares.append(
            {
                "commitment": b64(message.commitment),
                "shares": {who: b64(sealed) for who, sealed in message.sealed.items()},
            }
        )
    # Stage 2: each reply has the bundles the others sealed for it.
    answers = await asyncio.gather(
        *(
            post_waiting(world, p, "share_keys", body)
            for p, body in zip(parties, shares, strict=True)
        )
    )
    masked = []
    for p, reply in zip(parties, replies(answers, "share_keys"), strict=True):
        received = {str(m["sender"]): unb64(m["sealed"]) for m in reply["messages"]}
        assert set(received) == {str(q.index) for q in parties} - {str(p.index)}
        assert await read_afresh(world, p, "share_keys", monkeypatch) == reply["messages"]
        vector = p.client.masked_input(received, p.quantized).vector
        masked.append(
            {
                "vector": b64(vector.astype("<u8").tobytes()),
                "data_size": p.examples,
                "loss": p.loss,
                "accuracy": p.accuracy,
                "training_time_ms": 5,
            }
        )
    # Stage 3: each reply is the unmask request.
    answers = await asyncio.gather(
        *(
            post_waiting(world, p, "masked_input", body)
            for p, body in zip(parties, masked, strict=True)
        )
    )
    everyone = sorted(p.index for p in parties)
    for p, reply in zip(parties, replies(answers, "unmask"), strict=True):
        assert reply["messages"] == [{"sender": None, "survivors": everyone, "dropped": []}]
        assert await read_afresh(world, p, "unmask", monkeypatch) == reply["messages"]
    assert (await world.round(sid, 1))["status"] == "unmasking"
    # Stage 4: the unmask reply (no wait: nothing comes after it).
    request = UnmaskRequest(tuple(str(i) for i in everyone), ())
    for p in parties:
        reply = p.client.unmask(request)
        r = await world.client.post(
            p.path("unmask"),
            params=WAIT,
            json={
                "claim_token": p.token,
                "self_mask_shares": {o: b64(x) for o, x in reply.self_mask_shares.items()},
                "key_shares": {o: b64(x) for o, x in reply.key_shares.items()},
            },
            headers=bearer(p.runner.token),
        )
        assert r.status_code == 200 and "reply" not in r.json(), r.text
    await world.tick()
    assert (await world.round(sid, 1))["status"] == "completed"
    assert_fedavg(await global_model(world, sid), parties)


async def test_a_wait_the_round_ends_during_answers_the_refusal_in_the_reply(world: World):
    runners = await world.add_runners(3)
    s = await secure_session(world, config={"min_share": 0.3})
    sid = s["id"]
    parties = await joined(world, runners)
    await advertise(world, parties)
    # Only the first shares its keys and waits for the others' bundles; the stage's deadline
    # passes, it closes with one sharer (below the threshold) and the round fails.
    first = parties[0]
    got = (
        await world.client.get(
            first.path("advertise_keys"),
            headers={**bearer(first.runner.token), "X-Claim-Token": first.token},
        )
    ).json()
    adverts = {
        str(m["sender"]): KeyAdvert(str(m["sender"]), unb64(m["c_public"]), unb64(m["s_public"]))
        for m in got["messages"]
    }
    message = first.client.share_keys(adverts)
    body = {
        "commitment": b64(message.commitment),
        "shares": {who: b64(sealed) for who, sealed in message.sealed.items()},
    }
    waiting = asyncio.ensure_future(post_waiting(world, first, "share_keys", body))
    await until_stored(world, sid)
    assert not waiting.done()
    world.clock.advance(SECAGG["stage_timeout_seconds"] + 1)
    await world.tick()
    r = await asyncio.wait_for(waiting, 10)
    assert r.status_code == 200, r.text  # the message itself was accepted
    reply = r.json()["reply"]
    assert reply["ready"] is False and reply["error"]["code"] == "round_closed"
    failed = await world.round(sid, 1)
    assert failed["status"] == "failed" and reply["error"]["message"] == failed["failure_reason"]


async def until_stored(world: World, sid: str) -> None:
    """Until the round's share stage holds a message (the waiting post got in)."""

    async def stored() -> bool:
        async with world.container.db.read_session() as s:
            q = select(FLRound.id).where(FLRound.session_id == uuid.UUID(sid), FLRound.number == 1)
            round_id = (await s.scalars(q)).one()
            return bool((await repo.sent_to_server(s, round_id, ["share_keys"]))["share_keys"])

    await until(stored)


async def test_a_batch_accepts_its_messages_together_and_refuses_a_bad_one_alone(world: World):
    runners = await world.add_runners(3)
    s = await secure_session(world)
    sid = s["id"]
    parties = await joined(world, runners)
    honest = [keys_of(p) for p in parties[:2]]
    batch = [
        Pending(uuid.UUID(p.runner.id), {"claim_token": p.token, **keys}, p.token, None)
        for p, keys in zip(parties[:2], honest, strict=True)
    ]
    # The third copies the first's keys: refused, alone, with the protocol's reason.
    copier = parties[2]
    batch.append(
        Pending(
            uuid.UUID(copier.runner.id),
            {"claim_token": copier.token, **honest[0]},
            copier.token,
            None,
        )
    )
    # ... and a repeat of the first in the same batch answers as the first did.
    batch.append(
        Pending(uuid.UUID(parties[0].runner.id), dict(batch[0].body), parties[0].token, None)
    )
    db, deps = world.container.db, world.container.fl
    await secagg_service._run_batch(db, deps, uuid.UUID(sid), 1, "advertise_keys", batch)
    assert [p.error for p in (batch[0], batch[1], batch[3])] == [None, None, None]
    assert batch[0].caller is not None and batch[3].caller is not None
    refused = batch[2].error
    assert isinstance(refused, Exception) and getattr(refused, "code", None) == "secagg_refused"
    # Both honest adverts are in; the copier can still advertise keys of its own, which
    # completes (and closes) the stage.
    r = await world.client.post(
        copier.path("advertise_keys"),
        params=WAIT,
        json={"claim_token": copier.token, **keys_of(copier)},
        headers=bearer(copier.runner.token),
    )
    assert r.status_code == 200, r.text
    reply = r.json()["reply"]
    assert reply["ready"] and {m["sender"] for m in reply["messages"]} == {
        parties[0].index,
        parties[1].index,
    }


async def test_a_batch_whose_transaction_fails_answers_each_message_on_its_own(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    runners = await world.add_runners(3)
    s = await secure_session(world)
    parties = await joined(world, runners)
    batch = [
        Pending(uuid.UUID(p.runner.id), {"claim_token": p.token, **keys_of(p)}, p.token, None)
        for p in parties[:2]
    ]
    real = secagg_accept.accept_batch
    calls: list[int] = []

    async def failing_once(*args: Any) -> None:
        calls.append(len(args[-1]))
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        await real(*args)

    monkeypatch.setattr(secagg_accept, "accept_batch", failing_once)
    db, deps = world.container.db, world.container.fl
    await secagg_service._run_batch(db, deps, uuid.UUID(s["id"]), 1, "advertise_keys", batch)
    assert calls == [2, 1, 1]  # the batch, then each message alone
    assert [p.error for p in batch] == [None, None]
    assert all(p.caller is not None for p in batch)
