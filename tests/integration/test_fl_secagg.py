"""Secure aggregation (SecAgg+) in federated-learning rounds, in process, on SQLite and
PostgreSQL: the test acts as the runners with the FL core's :class:`SecAggClient`, exchanging
the four stages through ``…/rounds/{n}/secagg/{stage}``, while the rounds job closes stages,
unmasks the sum and aggregates. Proven here: a round without dropouts, dropouts recovered above
the reconstruction threshold and a round that fails below it (saying why), a malicious share
outvoted and named, a share bundle for a non-neighbour refused, a late stage message refused
naming the stage's deadline, plain updates refused for a SecAgg+ session, the aggregate equal to
plain FedAvg of the same updates within quantization error, and nothing in clear on the server:
every table's rows, every content-store object written during the round and every log line are
searched for each participant's update."""

from __future__ import annotations

import base64
import io
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from parity.clock import FrozenClock
from parity.container import Container
from parity.core.fl.aggregation import fedavg
from parity.core.fl.errors import TensorError
from parity.core.fl.model import parse_model_spec
from parity.core.fl.quantize import encode_update, layout_of, quantization_step
from parity.core.fl.secagg import KeyAdvert, UnmaskRequest, plan_round, round_context
from parity.core.fl.secagg_client import SecAggClient
from parity.core.fl.secagg_config import parse_secagg_fields
from parity.core.fl.shamir import PRIME, Share
from parity.core.fl.tensors import decode, to_lists
from parity.core.fl.train import parse_train_config, train_local
from parity.db.registry import Base
from parity.fl.models import FLRound
from tests.conftest import bearer
from tests.integration.test_fl_rounds import (
    FL,
    Runner,
    World,
    _world,
    claim_task,
    error,
    events_of,
    fetch,
    post_update,
)

SECAGG = {
    "mode": "secagg_plus",
    "num_shares": 3,
    "reconstruction_threshold": 2,
    "clipping_range": 8.0,
    "quantization_range": 2**20,
    "max_weight": 1000,
    "stage_timeout_seconds": 30,
}


@pytest.fixture
async def world(client: httpx.AsyncClient, container: Container, clock: FrozenClock) -> World:
    return await _world(client, container, clock)


async def secure_session(world: World, **over: Any) -> dict[str, Any]:
    config = {"privacy_config": {"secure_aggregation": dict(SECAGG)}, **over.pop("config", {})}
    return await world.started(config=config, **over)


# -- acting as a runner with the core's SecAgg+ client -----------------------------------------


@dataclass
class Party:
    """One participant of one SecAgg+ round: its claim, its trained update and its client."""

    runner: Runner
    task_id: str
    token: str
    config: dict[str, Any]
    client: SecAggClient
    weights: dict[str, np.ndarray]
    delta: dict[str, np.ndarray]
    examples: int
    quantized: np.ndarray
    loss: float
    accuracy: float

    @property
    def index(self) -> int:
        return int(self.config["participant_index"])

    def path(self, stage: str) -> str:
        sid, number = self.config["session_id"], self.config["round"]
        return f"{FL}/sessions/{sid}/rounds/{number}/secagg/{stage}"


async def join(world: World, runner: Runner, seed: int = 0) -> Party:
    """Claim the runner's task, train on its partition, quantize its weighted delta and set
    up its SecAgg+ client from the task config (as the runner's executor does)."""
    got = await claim_task(world, runner)
    config = got["task"]["config"]
    secure = config["secure_aggregation"]
    global_model = decode(await fetch(world, runner, config["global_model"]))
    with np.load(io.BytesIO(await fetch(world, runner, config["data"]))) as part:
        x, y = part["X"], part["y"]
    spec = parse_model_spec(config["model_type"], config["model_config"])
    trained = train_local(
        spec, global_model, x, y, parse_train_config(config["train_config"]), config["seed"]
    )
    layout = sorted(layout_of(global_model))
    delta = {
        name: np.asarray(trained.weights[name], np.float64) - np.asarray(a, np.float64)
        for name, a in global_model.items()
    }
    cfg = parse_secagg_fields(secure, "secure_aggregation")
    size = sum(math.prod(shape) for _, shape in layout) + 1
    setups = plan_round(
        [str(i) for i in secure["participants"]],
        cfg,
        bytes.fromhex(secure["graph_seed"]),
        round_context(config["session_id"], config["round"]),
        size,
    )
    quantized = encode_update(
        delta, trained.num_examples, cfg, layout, np.random.default_rng(seed + 100)
    )
    return Party(
        runner,
        got["task"]["id"],
        got["claim_token"],
        config,
        SecAggClient(setups[str(config["participant_index"])]),
        dict(trained.weights),
        delta,
        trained.num_examples,
        quantized,
        trained.loss,
        trained.accuracy,
    )


async def post(world: World, party: Party, stage: str, body: dict[str, Any]) -> httpx.Response:
    return await world.client.post(
        party.path(stage),
        json={"claim_token": party.token, **body},
        headers=bearer(party.runner.token),
    )


async def read(world: World, party: Party, stage: str) -> dict[str, Any]:
    r = await world.client.get(
        party.path(stage),
        params={"wait": 0},
        headers={**bearer(party.runner.token), "X-Claim-Token": party.token},
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


async def advertise(world: World, parties: Sequence[Party]) -> None:
    for p in parties:
        advert = p.client.advertise()
        r = await post(
            world,
            p,
            "advertise_keys",
            {"c_public": b64(advert.c_public), "s_public": b64(advert.s_public)},
        )
        assert r.status_code == 200, r.text


async def share(world: World, parties: Sequence[Party]) -> None:
    for p in parties:
        got = await read(world, p, "advertise_keys")
        assert got["ready"], got
        adverts = {
            str(m["sender"]): KeyAdvert(
                str(m["sender"]), unb64(m["c_public"]), unb64(m["s_public"])
            )
            for m in got["messages"]
        }
        message = p.client.share_keys(adverts)
        body = {
            "commitment": b64(message.commitment),
            "shares": {who: b64(sealed) for who, sealed in message.sealed.items()},
        }
        r = await post(world, p, "share_keys", body)
        assert r.status_code == 200, r.text


async def mask(world: World, parties: Sequence[Party]) -> None:
    for p in parties:
        got = await read(world, p, "share_keys")
        assert got["ready"], got
        received = {str(m["sender"]): unb64(m["sealed"]) for m in got["messages"]}
        masked = p.client.masked_input(received, p.quantized)
        body = {
            "vector": b64(masked.vector.astype("<u8").tobytes()),
            "data_size": p.examples,
            "loss": p.loss,
            "accuracy": p.accuracy,
            "training_time_ms": 5,
        }
        r = await post(world, p, "masked_input", body)
        assert r.status_code == 200, r.text


async def unmask_request(world: World, party: Party) -> UnmaskRequest:
    got = await read(world, party, "unmask")
    assert got["ready"], got
    (request,) = got["messages"]
    return UnmaskRequest(
        tuple(str(i) for i in request["survivors"]), tuple(str(i) for i in request["dropped"])
    )


async def unmask(world: World, parties: Sequence[Party], tamper: int | None = None) -> None:
    for p in parties:
        reply = p.client.unmask(await unmask_request(world, p))
        self_shares = dict(reply.self_mask_shares)
        if tamper == p.index:
            # A malicious survivor alters the share it reveals of a neighbour's self-mask seed.
            owner = next(o for o in sorted(self_shares) if o != str(p.index))
            share_ = Share.from_bytes(self_shares[owner])
            self_shares[owner] = Share(share_.index, (share_.value + 1) % PRIME).to_bytes()
        body = {
            "self_mask_shares": {o: b64(s) for o, s in self_shares.items()},
            "key_shares": {o: b64(s) for o, s in reply.key_shares.items()},
        }
        r = await post(world, p, "unmask", body)
        assert r.status_code == 200, r.text


async def joined(world: World, runners: Sequence[Runner]) -> list[Party]:
    parties = [await join(world, r, seed) for seed, r in enumerate(runners)]
    return sorted(parties, key=lambda p: p.index)


async def stored_round(world: World, sid: str, number: int) -> FLRound:
    async with world.container.db.read_session() as s:
        q = select(FLRound).where(FLRound.session_id == uuid.UUID(sid), FLRound.number == number)
        return (await s.scalars(q)).one()


async def global_model(world: World, sid: str) -> dict[str, np.ndarray]:
    session = await world.session(sid)
    r = await world.client.get(f"{FL}/sessions/{sid}/model/download", headers=world.auth)
    assert r.status_code == 200, r.text
    assert r.headers["X-Content-CID"] == session["global_model"]["cid"]
    return decode(r.content)


def assert_fedavg(model: dict[str, np.ndarray], parties: Sequence[Party]) -> None:
    """The secure aggregate equals plain FedAvg of the same updates within the quantization
    error: each participant's rounding moves each weighted value and its weight by less than
    one step, so the weighted mean moves by at most ``m * step * (1 + |x|) / sum(w)``."""
    plain = fedavg([(p.weights, p.examples) for p in parties])
    step = quantization_step(float(SECAGG["clipping_range"]), int(SECAGG["quantization_range"]))
    total_weight = sum(min(p.examples, 1000) / 1000 for p in parties)
    largest = max(float(np.max(np.abs(d))) for p in parties for d in p.delta.values())
    bound = len(parties) * step * (1 + largest) / total_weight + 1e-5  # + float32 rounding
    assert bound < 1e-3  # precise enough for the comparison to mean something
    for name, expected in plain.items():
        assert np.max(np.abs(np.asarray(model[name], np.float64) - expected)) < bound, name
    # ... and it is not any one participant's model.
    for p in parties:
        assert max(np.max(np.abs(model[n] - p.weights[n])) for n in plain) > 10 * bound


# -- a whole round ------------------------------------------------------------------------------


async def test_a_secagg_round_without_dropouts_equals_plain_fedavg(world: World):
    runners = await world.add_runners(3)
    s = await secure_session(world, total_rounds=2)
    sid = s["id"]
    assert s["config"]["privacy_config"]["secure_aggregation"]["mode"] == "secagg_plus"
    parties = await joined(world, runners)
    secure = parties[0].config["secure_aggregation"]
    assert secure["participants"] == [0, 1, 2] and secure["reconstruction_threshold"] == 2
    await advertise(world, parties)
    await share(world, parties)
    await mask(world, parties)
    # Every masked input is in: the round collects the unmask replies.
    assert (await world.round(sid, 1))["status"] == "unmasking"
    await unmask(world, parties)
    await world.tick()  # unmask, aggregate, open round 2
    done = await world.round(sid, 1)
    assert done["status"] == "completed", done
    assert (done["updates_received"], done["dropped"]) == (3, 0)
    assert done["metrics"]["participants"] == 3 and done["metrics"]["examples"] == 480
    assert_fedavg(await global_model(world, sid), parties)
    figures = (await stored_round(world, sid, 1)).metrics or {}
    assert figures["secagg"]["survivors"] == [0, 1, 2] and figures["secagg"]["dropped"] == []
    assert figures["secagg"]["rejected_shares"] == []
    # Round 2 runs SecAgg+ again, with a fresh communication graph seed.
    second = await joined(world, runners)
    assert second[0].config["round"] == 2
    assert second[0].config["secure_aggregation"]["graph_seed"] != secure["graph_seed"]
    assert (await world.session(sid))["status"] == "active"
    assert await events_of(world, sid) == ["fl.session.started", "fl.round.completed"]


async def test_a_plain_update_is_refused_for_a_secagg_session(world: World):
    runners = await world.add_runners(3)
    await secure_session(world)
    party = await join(world, runners[0])
    body = {
        "session_id": party.config["session_id"],
        "round_id": party.config["round_id"],
        "claim_token": party.token,
        "weights": to_lists(party.weights),
        "data_size": party.examples,
        "loss": party.loss,
        "accuracy": party.accuracy,
        "training_time_ms": 5,
    }
    r = await post_update(world, runners[0], body)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "secure_aggregation_required")
    assert "secagg/masked_input" in r.json()["error"]["message"]


# -- dropouts -----------------------------------------------------------------------------------


async def test_a_dropout_after_sharing_is_recovered_above_the_threshold(world: World):
    runners = await world.add_runners(4)
    s = await secure_session(world, min_participants=4, config={"min_share": 0.5})
    sid = s["id"]
    parties = await joined(world, runners)
    await advertise(world, parties)
    await share(world, parties)
    gone, survivors = parties[1], [p for i, p in enumerate(parties) if i != 1]
    await mask(world, survivors)  # one participant shared its keys, then went silent
    assert (await world.round(sid, 1))["status"] == "collecting"
    world.clock.advance(SECAGG["stage_timeout_seconds"] + 1)
    await world.tick()  # the masked-input stage closes at its deadline without it
    round_ = await world.round(sid, 1)
    assert (round_["status"], round_["dropped"]) == ("unmasking", 1)
    request = await unmask_request(world, survivors[0])
    assert request.dropped == (str(gone.index),)
    await unmask(world, survivors)
    await world.tick()
    done = await world.round(sid, 1)
    assert done["status"] == "completed", done
    assert (done["updates_received"], done["dropped"]) == (3, 1)
    # The dropped participant's pairwise masks were rebuilt from its neighbours' shares.
    assert_fedavg(await global_model(world, sid), survivors)


async def test_dropouts_below_the_threshold_fail_the_round_and_say_why(world: World):
    runners = await world.add_runners(3)
    s = await secure_session(world, config={"min_share": 0.3})
    sid = s["id"]
    parties = await joined(world, runners)
    await advertise(world, parties)
    await share(world, parties)
    await mask(world, parties[:1])  # two of three go silent after sharing their keys
    world.clock.advance(SECAGG["stage_timeout_seconds"] + 1)
    await world.tick()
    failed = await world.round(sid, 1)
    assert failed["status"] == "failed"
    reason = failed["failure_reason"]
    assert "secure aggregation" in reason and "1 of 3 participants sent a masked input" in reason
    assert "reconstruction_threshold 2" in reason
    session = await world.session(sid)
    assert (session["status"], session["failure_reason"]) == ("failed", reason)
    # The survivor's waiting long-poll hears why.
    r = await world.client.get(
        parties[0].path("unmask"),
        headers={**bearer(parties[0].runner.token), "X-Claim-Token": parties[0].token},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (409, "round_closed")
    assert r.json()["error"]["message"] == reason


# -- refusals -----------------------------------------------------------------------------------


async def test_a_malicious_share_is_outvoted_and_named(world: World):
    runners = await world.add_runners(4)
    s = await secure_session(world, min_participants=4)
    sid = s["id"]
    parties = await joined(world, runners)
    await advertise(world, parties)
    liar = parties[2]
    await round_with_a_liar(world, parties, liar)
    done = await world.round(sid, 1)
    assert done["status"] == "completed", done
    assert_fedavg(await global_model(world, sid), parties)
    figures = (await stored_round(world, sid, 1)).metrics or {}
    rejected = figures["secagg"]["rejected_shares"]
    assert rejected and {r["holder"] for r in rejected} == {liar.index}


async def round_with_a_liar(world: World, parties: list[Party], liar: Party) -> None:
    """The rest of a 4-party round in which ``liar`` first tries to send a share bundle to a
    participant that is not its neighbour, and later reveals a tampered share."""
    got = await read(world, liar, "advertise_keys")
    neighbours = {m["sender"] for m in got["messages"]}
    stranger = next(p.index for p in parties if p.index not in neighbours | {liar.index})
    r = await post(
        world,
        liar,
        "share_keys",
        {"commitment": b64(bytes(32)), "shares": {str(stranger): b64(b"x" * 200)}},
    )
    assert error(r) == (422, "secagg_refused", "shares")
    assert "not a neighbour" in r.json()["error"]["message"]
    await share(world, parties)
    await mask(world, parties)
    await unmask(world, parties, tamper=liar.index)
    await world.tick()


async def test_a_late_stage_message_is_refused_naming_the_stage_deadline(world: World):
    runners = await world.add_runners(3)
    s = await secure_session(world)
    sid = s["id"]
    parties = await joined(world, runners)
    await advertise(world, parties)
    await share(world, parties[:1])
    late = parties[1]
    deadline = (await read(world, late, "share_keys"))["stage_deadline_at"]
    adverts = (await read(world, late, "advertise_keys"))["messages"]
    message = late.client.share_keys(
        {
            str(m["sender"]): KeyAdvert(
                str(m["sender"]), unb64(m["c_public"]), unb64(m["s_public"])
            )
            for m in adverts
        }
    )
    world.clock.advance(SECAGG["stage_timeout_seconds"] + 1)
    r = await post(
        world,
        late,
        "share_keys",
        {
            "commitment": b64(message.commitment),
            "shares": {w: b64(x) for w, x in message.sealed.items()},
        },
    )
    assert (r.status_code, r.json()["error"]["code"]) == (409, "stage_closed")
    assert deadline in r.json()["error"]["message"]
    assert r.json()["error"]["details"]["stage"] == "share_keys"
    # A message for a stage that has not opened is refused too.
    r = await post(world, parties[0], "unmask", {})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "stage_not_open")
    await world.tick()  # the share stage closes with one sharer: below the threshold
    failed = await world.round(sid, 1)
    assert failed["status"] == "failed"
    assert "1 of 3 participants shared keys" in failed["failure_reason"]


async def test_stage_messages_need_the_tasks_claim_and_a_known_stage(world: World):
    runners = await world.add_runners(3)
    await secure_session(world)
    party = await join(world, runners[0])
    r = await world.client.post(
        party.path("advertise_keys"),
        json={
            "claim_token": "not-the-claim",
            "c_public": b64(bytes(32)),
            "s_public": b64(b"\1" * 32),
        },
        headers=bearer(party.runner.token),
    )
    assert (r.status_code, r.json()["error"]["code"]) == (409, "claim_invalid")
    r = await post(world, party, "setup", {})
    assert error(r) == (422, "invalid_input", "stage")
    r = await post(world, party, "advertise_keys", {"c_public": b64(bytes(31)), "s_public": "x"})
    assert error(r) == (422, "invalid_input", "c_public")
    advert = party.client.advertise()
    keys = {"c_public": b64(advert.c_public), "s_public": b64(advert.s_public)}
    assert (await post(world, party, "advertise_keys", keys)).status_code == 200
    again = await post(world, party, "advertise_keys", keys)  # a retry answers the same
    assert again.status_code == 200 and again.json()["stage"] == "advertise_keys"
    other = {"c_public": keys["s_public"], "s_public": keys["c_public"]}
    r = await post(world, party, "advertise_keys", other)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "secagg_message_exists")
    copier = await join(world, runners[1])
    r = await post(world, copier, "advertise_keys", keys)  # another participant's keys
    assert error(r) == (422, "secagg_refused", "c_public")
    (outsider,) = await world.add_runners(1)  # not a participant of the session
    r = await world.client.post(
        party.path("advertise_keys"),
        json={"claim_token": party.token, "c_public": b64(bytes(32)), "s_public": b64(bytes(32))},
        headers=bearer(outsider.token),
    )
    assert (r.status_code, r.json()["error"]["code"]) == (403, "not_a_participant")


# -- nothing in clear ---------------------------------------------------------------------------


def fingerprints(party: Party) -> list[bytes]:
    """Byte patterns any stored form of this participant's update would contain: the raw
    float32/float64 bytes of its trained tensors and of its delta, their base64, the raw and
    base64 bytes of its quantized (unmasked) vector, and its first values as JSON text."""
    out: list[bytes] = []
    for name, tensor in party.weights.items():
        for raw in (
            np.asarray(tensor, np.float32).tobytes()[:48],
            np.asarray(party.delta[name], np.float32).tobytes()[:48],
            np.asarray(party.delta[name], np.float64).tobytes()[:48],
        ):
            out += [raw, base64.b64encode(raw)]
        values = [float(v) for v in np.asarray(tensor, np.float32).ravel()[:3]]
        out += [
            json.dumps(values)[1:-1].encode(),
            json.dumps(values, separators=(",", ":"))[1:-1].encode(),
        ]
    quantized = party.quantized.astype("<u8").tobytes()[:48]
    out += [quantized, base64.b64encode(quantized)]
    return out


def holds(haystack: bytes, party: Party) -> bool:
    return any(pattern in haystack for pattern in fingerprints(party))


async def database_dump(world: World) -> bytes:
    parts: list[bytes] = []
    async with world.container.db.read_session() as s:
        for table in Base.metadata.sorted_tables:
            for row in (await s.execute(select(table))).all():
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        parts.append(bytes(value))
                    elif isinstance(value, dict | list):
                        parts.append(json.dumps(value).encode())
                    else:
                        parts.append(str(value).encode())
    return b"\n".join(parts)


async def store_objects(world: World, cids: set[Any]) -> list[bytes]:
    store = world.container.content_store
    out = []
    for cid in cids:
        out.append(b"".join([chunk async for chunk in store.cat(cid)]))
    return out


async def test_the_server_never_holds_an_individual_update_in_clear(
    world: World, capsys: pytest.CaptureFixture[str]
):
    runners = await world.add_runners(4)
    s = await secure_session(world, min_participants=4, config={"min_share": 0.5})
    sid = s["id"]
    store = world.container.content_store
    before = await store.pins()
    capsys.readouterr()
    parties = await joined(world, runners)
    # The check can fail: a clear update in any of the forms searched for is found.
    assert holds(json.dumps(to_lists(parties[0].weights)).encode(), parties[0])
    assert holds(base64.b64encode(parties[0].quantized.astype("<u8").tobytes()), parties[0])
    await advertise(world, parties)
    await share(world, parties)
    await mask(world, parties[:3])
    world.clock.advance(SECAGG["stage_timeout_seconds"] + 1)
    await world.tick()
    await unmask(world, parties[:3])
    await world.tick()
    assert (await world.round(sid, 1))["status"] == "completed"
    logs = capsys.readouterr()
    assert "secagg/masked_input" in logs.out + logs.err  # the round's requests were logged
    dump = await database_dump(world)
    created = await store_objects(world, (await store.pins()) - before)
    assert created  # the round's mean update and its new global model
    for party in parties:
        assert not holds(dump, party), f"participant {party.index} in the database"
        assert not holds((logs.out + logs.err).encode(), party), f"participant {party.index} logged"
        for blob in created:
            assert not holds(blob, party), f"participant {party.index} in the store"
            try:
                tensors = decode(blob)
            except TensorError:  # not a model file (a data split)
                continue
            for name, tensor in tensors.items():
                if name in party.weights and np.shape(tensor) == np.shape(party.weights[name]):
                    assert np.max(np.abs(tensor - party.weights[name])) > 1e-4
                    assert np.max(np.abs(tensor - party.delta[name])) > 1e-4


# -- session settings and cancel --------------------------------------------------------------


async def test_a_session_whose_rounds_could_never_be_unmasked_is_refused(world: World):
    body = world.body(
        min_participants=2,
        config={
            "privacy_config": {
                "secure_aggregation": {**SECAGG, "num_shares": 5, "reconstruction_threshold": 3}
            }
        },
    )
    r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
    field = "config.privacy_config.secure_aggregation.reconstruction_threshold"
    assert error(r) == (422, "invalid_input", field)
    assert "min_participants (2)" in r.json()["error"]["message"]


async def test_a_session_cancelled_while_unmasking_ends_the_round_and_its_tasks(world: World):
    runners = await world.add_runners(3)
    s = await secure_session(world)
    sid = s["id"]
    parties = await joined(world, runners)
    await advertise(world, parties)
    await share(world, parties)
    await mask(world, parties)
    assert (await world.round(sid, 1))["status"] == "unmasking"
    r = await world.client.post(f"{FL}/sessions/{sid}/cancel", headers=world.auth)
    assert r.status_code == 200, r.text
    await world.tick()
    ended = await world.round(sid, 1)
    assert ended["status"] == "failed" and "cancelled" in ended["failure_reason"]
    for p in parties:
        task = (await world.client.get(f"/api/v1/tasks/{p.task_id}", headers=world.auth)).json()
        assert task["status"] in ("cancelled", "cancel_requested"), task
    r = await post(world, parties[0], "unmask", {"self_mask_shares": {}, "key_shares": {}})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "round_closed")


async def test_every_stage_message_with_one_wrong_value_is_refused_below_500(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """Before the first participant sends each stage's message, every place in it (the claim
    token, keys, commitments, each share, the masked vector, the figures) is sent set to a wrong
    value or removed: never a 500, every refusal says what it refused, and the round still
    completes with the real messages."""
    from tests.integration.test_no_server_errors import WRONG, _check, _paths, _with

    runners = await world.add_runners(3)
    s = await secure_session(world, total_rounds=1)
    parties = await joined(world, runners)
    real_post = post
    failures: list[str] = []
    accepted: list[str] = []

    def allowed(place: tuple[Any, ...], value: Any) -> bool:
        """What a message may carry (not sent: it would be the participant's message):
        figures in range, either unmask map left out."""
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if place == ("loss",):
            return number and 0 <= value < math.inf
        if place == ("training_time_ms",):
            return number and 0 <= value < 2**31
        if place == ("accuracy",):
            return number and 0 <= value <= 1
        left_out = value is None or value == "<removed>" or value == {}
        if place[0] in ("self_mask_shares", "key_shares"):
            # Either map, or any share in it, may be left out: the server combines what the
            # threshold needs from the survivors that answer.
            return left_out if len(place) == 1 else value == "<removed>"
        return False

    async def swept(world: World, party: Party, stage: str, body: dict[str, Any]) -> httpx.Response:
        if party.index == 0:
            message = {"claim_token": party.token, **body}
            for place in _paths(message):
                values = [*WRONG, "AAAA", "<removed>"]
                if place[0] == "shares" and len(place) == 2:
                    # A sealed bundle is opaque to the server (only its recipient can open it
                    # and refuses a forged one): any base64 text of a bundle's size passes here.
                    values = [v for v in values if v not in ("AAAA", "x" * 5000)]
                for value in [v for v in values if not allowed(place, v)]:
                    mutant = _with(message, place, value, remove=value == "<removed>")
                    r = await world.client.post(
                        party.path(stage),
                        content=json.dumps(mutant).encode(),
                        headers={**bearer(party.runner.token), "content-type": "application/json"},
                    )
                    if r.status_code == 200:
                        accepted.append(f"{stage} {place} = {value!r:.20}")
                    _check(r, f"{stage} {place} = {value!r:.30}", failures)
        return await real_post(world, party, stage, body)

    monkeypatch.setitem(globals(), "post", swept)
    await advertise(world, parties)
    await share(world, parties)
    await mask(world, parties)
    await unmask(world, parties)
    assert not failures, "\n".join(failures[:20])
    assert accepted == []
    await world.tick()
    assert (await world.round(s["id"], 1))["status"] == "completed"
