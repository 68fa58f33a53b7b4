"""The federated-learning session API over HTTP, in process, on SQLite and PostgreSQL: the
README's request, strict validation naming the field, visibility and pagination, start refused
for want of runners, cancel, the model before start, and the data path (what the server stores
a runner can download by CID)."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from parity.app import create_app
from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import FrozenClock
from parity.container import Container
from parity.core.fl.tensors import decode
from parity.core.storage.multiformats import Cid, sha256_multihash
from parity.db.session import Database
from parity.events.models import Event
from parity.fl import store_io
from parity.fl.errors import ContentInvalid
from parity.fl.models import FLRound, FLSession
from parity.ledger.models import Reservation
from tests.conftest import ADMIN, ALICE, BOB, bearer, make_settings, sign_in
from tests.integration.queue_helpers import device, get_task, register_runner

V1 = "/api/v1"
FL = f"{V1}/federated-learning"
MIRROR = "/api/federated-learning"
RAW_CODEC = 0x55


def readme_body(dataset_cid: str) -> dict[str, Any]:
    """The original README's example request, as written (creator_address included)."""
    return {
        "name": "MNIST Classification",
        "description": "Distributed digit classification",
        "model_type": "neural_network",
        "total_rounds": 10,
        "min_participants": 3,
        "creator_address": BOB.address,  # not the caller: accepted and ignored
        "training_data": {
            "dataset_cid": dataset_cid,
            "data_format": "csv",
            "split_strategy": "non_iid",
            "metadata": {"alpha": 0.5, "min_samples": 5, "overlap_ratio": 0.0},
        },
        "config": {
            "aggregation_method": "federated_averaging",
            "learning_rate": 0.001,
            "batch_size": 32,
            "local_epochs": 5,
            "model_config": {"input_size": 4, "hidden_size": 8, "output_size": 3},
        },
    }


def csv_dataset(rows: int = 90) -> bytes:
    rng = np.random.default_rng(0)
    lines = ["f1,f2,f3,f4,label"]
    for i in range(rows):
        x = rng.normal(size=4) + (i % 3)
        lines.append(",".join(f"{v:.4f}" for v in x) + f",{i % 3}")
    return ("\n".join(lines) + "\n").encode()


def absent_cid(data: bytes = b"never stored here") -> str:
    return Cid.v1(RAW_CODEC, sha256_multihash(hashlib.sha256(data).digest())).encode()


async def upload(client: httpx.AsyncClient, token: str, data: bytes) -> str:
    r = await client.put(f"{V1}/storage/upload", content=data, headers=bearer(token))
    assert r.status_code in (200, 201), r.text
    return str(r.json()["cid"])


async def create(
    client: httpx.AsyncClient, token: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(f"{FL}/sessions", json=body, headers={**bearer(token), **headers})


async def created(client: httpx.AsyncClient, token: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await create(client, token, body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def refusal(r: httpx.Response) -> tuple[str, str]:
    """(field, message) of a 422."""
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    return str(err["details"].get("field")), str(err["message"])


@dataclass
class World:
    client: httpx.AsyncClient
    container: Container
    clock: FrozenClock
    alice: str
    dataset_cid: str

    def body(self, **over: Any) -> dict[str, Any]:
        out = readme_body(self.dataset_cid)
        out.update(over)
        return out


@pytest.fixture
async def world(client: httpx.AsyncClient, container: Container, clock: FrozenClock) -> World:
    alice = await sign_in(client, ALICE)
    return World(client, container, clock, alice, await upload(client, alice, csv_dataset()))


async def fl_runner(client: httpx.AsyncClient, owner: str, *, fl: bool = True) -> str:
    token, _ = await register_runner(client, owner, device(), fl=fl)
    return token


# -- create ---------------------------------------------------------------------------------


async def test_readme_request_creates_a_pending_session_owned_by_the_token(world: World):
    r = await create(world.client, world.alice, world.body())
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["status"] == "pending" and s["current_round"] == 0
    assert s["creator_address"] == ALICE.address.lower()  # the body's BOB is ignored
    assert (s["name"], s["model_type"], s["total_rounds"]) == (
        "MNIST Classification",
        "neural_network",
        10,
    )
    assert (s["min_participants"], s["max_participants"], s["participant_count"]) == (3, 3, 0)
    assert s["global_model"] is None and s["failure_reason"] is None
    assert s["training_data"]["dataset_cid"] == world.dataset_cid
    assert s["config"]["aggregation_method"] in ("federated_averaging", "fedavg")
    assert s["config"]["model_config"] == {"input_size": 4, "hidden_size": 8, "output_size": 3}
    # A seed is drawn and stored when none is given, so partitioning can be reproduced.
    assert isinstance(s["seed"], int) and s["training_data"]["seed"] == s["seed"]
    # The /api mirror serves the same resource.
    again = await world.client.get(f"{MIRROR}/sessions/{s['id']}", headers=bearer(world.alice))
    assert again.status_code == 200 and again.json()["id"] == s["id"]


async def test_a_given_seed_is_kept(world: World):
    body = world.body()
    body["training_data"]["seed"] = 7
    s = await created(world.client, world.alice, body)
    assert s["seed"] == 7


def _without(body: dict[str, Any], path: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    del node[last]
    return out


@pytest.mark.parametrize(
    "path",
    [
        "name",
        "model_type",
        "total_rounds",
        "min_participants",
        "training_data",
        "training_data.split_strategy",
        "config",
        "config.learning_rate",
        "config.batch_size",
        "config.local_epochs",
        "config.aggregation_method",
    ],
)
async def test_a_missing_required_field_is_422_naming_it(world: World, path: str):
    field, _ = refusal(await create(world.client, world.alice, _without(world.body(), path)))
    assert field == path


async def test_missing_model_config_and_alpha_give_the_readmes_messages(world: World):
    field, message = refusal(
        await create(world.client, world.alice, _without(world.body(), "config.model_config"))
    )
    assert field == "config.model_config"
    assert "model configuration is required - please provide model parameters" in message
    no_alpha = _without(world.body(), "training_data.metadata.alpha")
    field, message = refusal(await create(world.client, world.alice, no_alpha))
    assert field == "training_data.metadata.alpha"
    assert "alpha parameter is required for non_iid partitioning strategy" in message


async def test_nan_is_refused_naming_the_field(world: World):
    text = json.dumps(world.body()).replace('"learning_rate": 0.001', '"learning_rate": NaN')
    assert "NaN" in text
    r = await world.client.post(
        f"{FL}/sessions",
        content=text,
        headers={**bearer(world.alice), "Content-Type": "application/json"},
    )
    field, _ = refusal(r)
    assert field == "config.learning_rate"


async def test_an_unknown_aggregation_method_lists_the_valid_ones(world: World):
    body = world.body()
    body["config"]["aggregation_method"] = "fedmagic"
    field, message = refusal(await create(world.client, world.alice, body))
    assert field == "config.aggregation_method"
    for valid in ("federated_averaging", "fedprox", "fedadam", "krum"):
        assert valid in message


@pytest.mark.parametrize(
    ("model_type", "path", "extra", "field", "valid"),
    [
        (
            "neural_network",
            "config.aggregation_params",
            {"muu": 1},
            "config.aggregation_params.muu",
            "for fedprox aggregation; valid: mu",
        ),
        (
            "neural_network",
            "config.model_config",
            {"hiden_size": 5},
            "config.model_config.hiden_size",
            "for neural_network model; valid: hidden_size, hidden_sizes, input_size, output_size",
        ),
        (
            "neural_network",
            "training_data.metadata",
            {"alpah": 5},
            "training_data.metadata.alpah",
            "for dirichlet partitioning strategy; valid: alpha, min_samples, overlap_ratio, "
            "self_balancing",
        ),
        # The README body's hidden_size: logistic regression has no hidden layer.
        (
            "logistic_regression",
            "config.model_config",
            {},
            "config.model_config.hidden_size",
            "for logistic_regression model; valid: input_size, output_size",
        ),
    ],
)
async def test_an_unknown_nested_key_is_422_naming_it_and_nothing_is_stored(
    world: World, model_type: str, path: str, extra: dict[str, Any], field: str, valid: str
):
    body = world.body(model_type=model_type)
    body["config"]["aggregation_method"] = "fedprox"
    body["config"]["aggregation_params"] = {"mu": 0.1}
    node = body
    for key in path.split("."):
        node = node[key]
    node.update(extra)
    r = await create(world.client, world.alice, body)
    got, message = refusal(r)
    assert r.json()["error"]["code"] == "invalid_input"
    assert got == field
    assert f"unknown field {field.rsplit('.', 1)[1]!r} {valid}" in message
    listed = await world.client.get(f"{FL}/sessions", headers=bearer(world.alice))
    assert listed.status_code == 200 and listed.json()["sessions"] == []


async def test_a_dataset_cid_the_store_lacks_is_422_naming_it(world: World):
    body = world.body()
    body["training_data"]["dataset_cid"] = absent_cid()
    field, message = refusal(await create(world.client, world.alice, body))
    assert field == "training_data.dataset_cid"
    assert absent_cid() in message
    body["training_data"]["dataset_cid"] = "not-a-cid"
    field, _ = refusal(await create(world.client, world.alice, body))
    assert field == "training_data.dataset_cid"


async def test_a_body_that_is_not_a_json_object_is_422(world: World):
    h = {**bearer(world.alice), "Content-Type": "application/json"}
    r = await world.client.post(f"{FL}/sessions", content="[1, 2]", headers=h)
    assert refusal(r)[0] == "body"
    r = await world.client.post(f"{FL}/sessions", content="{oops", headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"


async def test_create_needs_a_token(world: World):
    r = await world.client.post(f"{FL}/sessions", json=world.body())
    assert r.status_code == 401


async def test_an_idempotency_key_creates_one_session(world: World):
    first = await create(world.client, world.alice, world.body(), **{"Idempotency-Key": "k1"})
    second = await create(world.client, world.alice, world.body(), **{"Idempotency-Key": "k1"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    listed = await world.client.get(f"{FL}/sessions", headers=bearer(world.alice))
    assert listed.json()["count"] == 1


# -- read, list ---------------------------------------------------------------------------


async def test_sessions_are_visible_to_their_creator_and_operators_only(world: World):
    s = await created(world.client, world.alice, world.body())
    bob = await sign_in(world.client, BOB)
    admin = await sign_in(world.client, ADMIN)
    r = await world.client.get(f"{FL}/sessions/{s['id']}", headers=bearer(bob))
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    for sub in ("rounds", "participants", "metrics", "model"):
        r = await world.client.get(f"{FL}/sessions/{s['id']}/{sub}", headers=bearer(bob))
        assert r.status_code == 404, (sub, r.text)
    r = await world.client.post(f"{FL}/sessions/{s['id']}/cancel", headers=bearer(bob))
    assert r.status_code == 404
    assert (await world.client.get(f"{FL}/sessions", headers=bearer(bob))).json()["count"] == 0

    bobs = await created(world.client, bob, world.body(name="bob's"))
    r = await world.client.get(f"{FL}/sessions/{s['id']}", headers=bearer(admin))
    assert r.status_code == 200
    everyone = (await world.client.get(f"{FL}/sessions", headers=bearer(admin))).json()
    assert {x["id"] for x in everyone["sessions"]} == {s["id"], bobs["id"]}
    mine = (await world.client.get(f"{FL}/sessions", headers=bearer(world.alice))).json()
    assert [x["id"] for x in mine["sessions"]] == [s["id"]]


async def test_sessions_are_listed_newest_first_a_page_at_a_time(world: World):
    ids = []
    for i in range(5):
        ids.append((await created(world.client, world.alice, world.body(name=f"s{i}")))["id"])
        world.clock.advance(1)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await world.client.get(f"{FL}/sessions", params=params, headers=bearer(world.alice))
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["limit"] == 2 and page["count"] == len(page["sessions"]) <= 2
        seen += [x["id"] for x in page["sessions"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids)) and pages == 3
    r = await world.client.get(
        f"{FL}/sessions", params={"cursor": "garbage!"}, headers=bearer(world.alice)
    )
    assert refusal(r)[0] == "cursor"


async def test_a_pending_session_has_no_rounds_participants_metrics_or_model(world: World):
    s = await created(world.client, world.alice, world.body())
    base, h = f"{FL}/sessions/{s['id']}", bearer(world.alice)
    r = await world.client.get(f"{base}/rounds", headers=h)
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None, "limit": 50}
    r = await world.client.get(f"{base}/rounds/1", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "round_not_found"
    r = await world.client.get(f"{base}/participants", headers=h)
    assert r.json() == {
        "session_id": s["id"],
        "participants": [],
        "count": 0,
        "next_cursor": None,
        "limit": 1000,
    }
    assert (await world.client.get(f"{base}/metrics", headers=h)).json() == {
        "session_id": s["id"],
        "rounds": [],
    }
    for path in ("model", "model/download"):
        r = await world.client.get(f"{base}/{path}", headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_global_model", path


# -- start, cancel ----------------------------------------------------------------------------


async def test_start_with_too_few_online_fl_runners_is_409_saying_how_many(world: World):
    s = await created(world.client, world.alice, world.body())
    await fl_runner(world.client, world.alice)
    await fl_runner(world.client, world.alice, fl=False)  # online but not offering FL
    r = await world.client.post(f"{FL}/sessions/{s['id']}/start", headers=bearer(world.alice))
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_runners"
    assert err["message"] == "insufficient online runners: need 3, have 1"
    after = await world.client.get(f"{FL}/sessions/{s['id']}", headers=bearer(world.alice))
    assert after.json()["status"] == "pending"


async def test_cancel_ends_a_pending_session_once_and_it_cannot_start(world: World):
    s = await created(world.client, world.alice, world.body())
    url, h = f"{FL}/sessions/{s['id']}", bearer(world.alice)
    r = await world.client.post(f"{url}/cancel", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["session"]["status"] == "cancelled"
    again = await world.client.post(f"{url}/cancel", headers=h)
    assert again.status_code == 200 and again.json()["session"]["status"] == "cancelled"
    r = await world.client.post(f"{url}/start", headers=h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_not_pending"


async def _events(c: Container, event_type: str) -> list[Event]:
    async with c.db.read_session() as db:
        return list((await db.scalars(select(Event).where(Event.type == event_type))).all())


def _small_body(world: World) -> dict[str, Any]:
    body = world.body(min_participants=2, total_rounds=3)
    body["training_data"]["split_strategy"] = "iid"
    body["training_data"]["metadata"] = {}
    return body


async def test_cancelling_an_active_session_fails_its_round_and_cancels_its_tasks(world: World):
    await fl_runner(world.client, world.alice)
    await fl_runner(world.client, world.alice)
    s = await created(world.client, world.alice, _small_body(world))
    url, h = f"{FL}/sessions/{s['id']}", bearer(world.alice)
    r = await world.client.post(f"{url}/start", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "Session started successfully"
    started = r.json()["session"]
    assert started["status"] == "active" and started["participant_count"] == 2
    assert started["global_model"]["round"] == 0
    (event,) = await _events(world.container, "fl.session.started")
    assert event.owner_address == ALICE.address.lower() and event.resource_id == s["id"]
    assert (event.data["session_id"], event.data["status"]) == (s["id"], "active")
    tasks = (
        await world.client.get(
            f"{V1}/tasks", params={"type": "fl_train"}, headers=bearer(world.alice)
        )
    ).json()
    assert len(tasks) == 2 and {t["status"] for t in tasks} == {"pending"}

    listed = (await world.client.get(f"{url}/rounds", headers=h)).json()
    assert [(x["number"], x["status"]) for x in listed["items"]] == [(1, "collecting")]
    assert (listed["items"][0]["participants"], listed["items"][0]["required_updates"]) == (2, 2)
    people = (await world.client.get(f"{url}/participants", headers=h)).json()
    assert [p["participant_index"] for p in people["participants"]] == [0, 1]
    assert sum(p["num_examples"] for p in people["participants"]) == 90

    model = (await world.client.get(f"{url}/model", headers=h)).json()
    assert model["tensors"] == {
        "fc1.weight": [8, 4],
        "fc1.bias": [8],
        "fc2.weight": [3, 8],
        "fc2.bias": [3],
    }
    file = await world.client.get(f"{url}/model/download", headers=h)
    assert file.status_code == 200, file.text
    assert hashlib.sha256(file.content).hexdigest() == model["sha256"]
    assert file.headers["x-content-cid"] == model["cid"]
    decoded = decode(file.content)
    assert {k: list(v.shape) for k, v in decoded.items()} == model["tensors"]

    r = await world.client.post(f"{url}/cancel", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["session"]["status"] == "cancelled"
    round1 = (await world.client.get(f"{url}/rounds/1", headers=h)).json()
    assert round1["status"] == "failed" and "cancelled" in round1["failure_reason"]
    assert round1["dropped"] == 2 and round1["updates_received"] == 0
    for t in tasks:
        assert (await get_task(world.client, world.alice, t["id"]))["status"] == "cancelled"
    # The model the session started from stays readable.
    model = (await world.client.get(f"{url}/model", headers=h)).json()
    assert model["round"] == 0 and model["status"] == "cancelled" and model["intermediate"]
    r = await world.client.post(f"{url}/start", headers=h)
    assert r.status_code == 409


async def test_a_finished_session_cannot_be_cancelled(world: World):
    s = await created(world.client, world.alice, world.body())
    async with world.container.db.transaction() as db:
        row = await db.get(FLSession, uuid.UUID(s["id"]))
        assert row is not None
        row.status = "completed"
    r = await world.client.post(f"{FL}/sessions/{s['id']}/cancel", headers=bearer(world.alice))
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_finished"


async def _add_rounds(c: Container, session_id: str, numbers: range) -> None:
    """Completed rounds written directly (the round machinery has its own tests)."""
    now = c.clock.now()
    async with c.db.transaction() as db:
        row = await db.get(FLSession, uuid.UUID(session_id))
        assert row is not None
        row.status, row.current_round = "active", numbers[-1]
        for n in numbers:
            metrics = {"participants": 2, "examples": 90, "train_loss_mean": 1.0 / n}
            metrics["slowest_training_ms"] = 400
            db.add(
                FLRound(
                    id=uuid.uuid4(),
                    session_id=row.id,
                    number=n,
                    status="completed",
                    participants=2,
                    required_updates=2,
                    model_in_cid="in",
                    model_in_sha256="0" * 64,
                    model_out_cid=f"out{n}",
                    model_out_sha256="1" * 64,
                    metrics=metrics,
                    failure_reason=None,
                    opened_at=now,
                    deadline_at=now + timedelta(seconds=600),
                    closed_at=now + timedelta(seconds=1),
                    completed_at=now + timedelta(milliseconds=1500),
                )
            )


async def test_rounds_are_listed_newest_first_and_metrics_derive_the_overhead(world: World):
    s = await created(world.client, world.alice, world.body())
    await _add_rounds(world.container, s["id"], range(1, 4))
    url, h = f"{FL}/sessions/{s['id']}", bearer(world.alice)
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await world.client.get(f"{url}/rounds", params=params, headers=h)).json()
        seen += [x["number"] for x in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [3, 2, 1]
    one = (await world.client.get(f"{url}/rounds/2", headers=h)).json()
    assert (one["model_cid"], one["metrics"]["round"]) == ("out2", 2)
    metrics = (await world.client.get(f"{url}/metrics", headers=h)).json()["rounds"]
    assert [m["round"] for m in metrics] == [1, 2, 3]
    first = metrics[0]
    assert (first["participants"], first["examples"], first["train_loss_mean"]) == (2, 90, 1.0)
    # Opened → completed is 1500 ms; the slowest participant trained for 400 of them.
    assert (first["duration_ms"], first["coordination_overhead_ms"]) == (1500.0, 1100.0)
    bad = await world.client.get(f"{url}/rounds", params={"cursor": "zzz"}, headers=h)
    assert refusal(bad)[0] == "cursor"


async def test_model_updates_need_a_runner_token(world: World):
    r = await world.client.post(f"{FL}/model-updates", json={}, headers=bearer(world.alice))
    assert r.status_code == 403 and r.json()["error"]["code"] == "runner_token_required"


# -- the data path ----------------------------------------------------------------------------


async def test_a_runner_downloads_what_the_fl_server_stored(world: World):
    data = b"\x00model bytes\xff" * 50_000  # several blocks
    cid, sha = await store_io.put_bytes(world.container.content_store, data)
    assert sha == hashlib.sha256(data).hexdigest()
    runner = await fl_runner(world.client, world.alice)
    r = await world.client.get(f"{V1}/storage/download/{cid}", headers=bearer(runner))
    assert r.status_code == 200, r.text
    assert r.content == data and hashlib.sha256(r.content).hexdigest() == sha
    # Stored pinned, so garbage collection keeps it though no account pins it.
    assert Cid.parse(cid) in await world.container.content_store.pins()


async def test_get_bytes_checks_hash_size_and_presence(world: World):
    store = world.container.content_store
    cid, sha = await store_io.put_bytes(store, b"abc" * 10)
    assert await store_io.get_bytes(store, cid, max_bytes=30, sha256=sha) == b"abc" * 10
    with pytest.raises(ContentInvalid, match="sha256"):
        await store_io.get_bytes(store, cid, max_bytes=30, sha256="0" * 64)
    with pytest.raises(ContentInvalid, match="at most 29") as too_big:
        await store_io.get_bytes(store, cid, max_bytes=29, sha256=None, field="update_cid")
    assert too_big.value.field == "update_cid"
    with pytest.raises(ContentInvalid, match="no content"):
        await store_io.get_bytes(store, absent_cid(), max_bytes=30, sha256=None)
    with pytest.raises(ContentInvalid, match="not a usable CID"):
        await store_io.get_bytes(store, "nope", max_bytes=30, sha256=None)


# -- the reward pool --------------------------------------------------------------------------

PRICING = {
    "PRICE_TASK_BASE": "100",
    "PROTOCOL_FEE_BPS": "1000",
    "PROTOCOL_FEE_ADDRESS": "0x" + "fe" * 20,
    "FILECOIN_RPC": "http://chain.invalid",
    "FILECOIN_STAKE_WALLET_ADDRESS": "0x" + "5a" * 20,
    "STAKE_CACHE_SECONDS": "0",
}


@dataclass
class Priced:
    client: httpx.AsyncClient
    container: Container
    chain: FakeChain

    async def stake(self, account: Any, amount: int) -> None:
        client = FakeChainClient(self.chain)
        self.chain.mint(account.address, amount)
        await client.approve(account, amount)
        await client.add_funds(account, account.address.lower(), amount)


@pytest.fixture
async def priced(database_url: str, tmp_path: Path) -> AsyncIterator[Priced]:
    s = make_settings(database_url, tmp_path / "priced", **PRICING)
    c = Container(settings=s, db=Database(s.resolved_database_url))
    chain = FakeChain()
    c.chain = FakeChainClient(chain)
    app = create_app(c, run_migrations=False, start_jobs=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://parity.test") as http,
    ):
        yield Priced(http, c, chain)
    await c.db.dispose()


async def _pools(c: Container) -> list[Reservation]:
    async with c.db.read_session() as db:
        q = select(Reservation).where(Reservation.source_type == "fl_session")
        return list((await db.scalars(q)).all())


async def test_the_reward_pool_is_held_at_create_and_released_at_cancel(priced: Priced):
    alice = await sign_in(priced.client, ALICE)
    await priced.stake(ALICE, 10_000)
    cid = await upload(priced.client, alice, csv_dataset())
    body = readme_body(cid)
    body["reward_pool"] = "2500"
    s = await created(priced.client, alice, body)
    assert s["reward_pool"] == "2500"
    (pool,) = await _pools(priced.container)
    assert (pool.source_id, pool.amount, pool.status) == (s["id"], 2500, "open")

    too_much = {**body, "reward_pool": "1000000"}
    r = await create(priced.client, alice, too_much)
    assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_funds"
    assert len(await _pools(priced.container)) == 1  # the refused session held nothing

    r = await priced.client.post(f"{FL}/sessions/{s['id']}/cancel", headers=bearer(alice))
    assert r.status_code == 200, r.text
    (pool,) = await _pools(priced.container)
    assert pool.status == "released"
