"""Federated-learning rounds end to end, in process, on SQLite and PostgreSQL: runners
registered through the API claim their ``fl_train`` tasks, fetch the global model and their
partition by CID, train with the core trainer and post updates; the rounds job closes,
aggregates and opens rounds until the session completes (ARCHITECTURE §4-§5, FL round rules).
Also: the update checks (late, wrong runner, bad shape, NaN, repeat), min_share at the
deadline, a failing round, a lost participant, a replacement between rounds, a re-run
aggregation, and a restart with a round left mid-aggregation."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sqlalchemy import func, select

from parity.app import create_app
from parity.chain.fake import FakeChain, FakeChainClient
from parity.clock import FrozenClock
from parity.container import Container
from parity.core.fl.model import parse_model_spec
from parity.core.fl.tensors import decode, encode, to_lists
from parity.core.fl.train import parse_train_config, train_local
from parity.db.session import Database
from parity.events.models import Event
from parity.fl import aggregate, claim_answer, updates
from parity.fl import rounds_repository as rounds_repo
from parity.fl.jobs import RoundsLoop, close_due_rounds, run_rounds
from parity.fl.models import FLRound, FLRoundSlot, FLSession
from parity.ledger.models import Entry, Posting, Reservation
from parity.tasks.models import Task
from tests.conftest import ALICE, BOB, bearer, make_settings, sign_in, until
from tests.integration.queue_helpers import act, claim, device, heartbeat, register_runner

V1 = "/api/v1"
FL = f"{V1}/federated-learning"
MODEL = {"input_size": 64, "hidden_size": 16, "output_size": 10}


def digits_csv(rows: int = 600) -> bytes:
    """A subset of scikit-learn's digits as CSV: 64 pixel columns (scaled to 0..1), label."""
    data = load_digits()
    lines = [",".join([f"p{i}" for i in range(64)] + ["label"])]
    for x, y in zip(data.data[:rows], data.target[:rows], strict=True):
        lines.append(",".join(f"{v / 16:.4f}" for v in x) + f",{int(y)}")
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Runner:
    token: str
    id: str
    claim: dict[str, Any] | None = None


@dataclass
class World:
    client: httpx.AsyncClient
    container: Container
    clock: FrozenClock
    alice: str
    dataset: str
    runners: list[Runner] = field(default_factory=list)

    async def add_runners(self, n: int, owner: str | None = None) -> list[Runner]:
        added = []
        for _ in range(n):
            token, body = await register_runner(self.client, owner or self.alice, device(), fl=True)
            added.append(Runner(token, str(body["runner"]["id"])))
        self.runners += added
        return added

    def body(self, **over: Any) -> dict[str, Any]:
        config = {
            "aggregation_method": "federated_averaging",
            "learning_rate": 0.1,
            "batch_size": 16,
            "local_epochs": 5,
            "model_config": MODEL,
        }
        config.update(over.pop("config", {}))
        out: dict[str, Any] = {
            "name": "digits",
            "model_type": "neural_network",
            "total_rounds": 3,
            "min_participants": 3,
            "training_data": {
                "dataset_cid": self.dataset,
                "data_format": "csv",
                "split_strategy": "iid",
                "seed": 7,
                "test_split": 0.2,
            },
            "config": config,
        }
        out.update(over)
        return out

    async def started(self, **over: Any) -> dict[str, Any]:
        """Create and start a session; returns the session read."""
        r = await self.client.post(f"{FL}/sessions", json=self.body(**over), headers=self.auth)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        r = await self.client.post(f"{FL}/sessions/{sid}/start", headers=self.auth)
        assert r.status_code == 200, r.text
        assert r.json()["message"] == "Session started successfully"
        out: dict[str, Any] = r.json()["session"]
        return out

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.alice)

    async def session(self, sid: str) -> dict[str, Any]:
        r = await self.client.get(f"{FL}/sessions/{sid}", headers=self.auth)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def round(self, sid: str, number: int) -> dict[str, Any]:
        r = await self.client.get(f"{FL}/sessions/{sid}/rounds/{number}", headers=self.auth)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def tick(self) -> int:
        return await run_rounds(self.container.db, self.container.fl)


async def _world(client: httpx.AsyncClient, container: Container, clock: FrozenClock) -> World:
    alice = await sign_in(client, ALICE)
    r = await client.put(f"{V1}/storage/upload", content=digits_csv(), headers=bearer(alice))
    assert r.status_code == 201, r.text
    return World(client, container, clock, alice, str(r.json()["cid"]))


@pytest.fixture
async def world(client: httpx.AsyncClient, container: Container, clock: FrozenClock) -> World:
    return await _world(client, container, clock)


PRICING = {
    "PRICE_TASK_BASE": "100",
    "PROTOCOL_FEE_BPS": "1000",
    "PROTOCOL_FEE_ADDRESS": "0x" + "fe" * 20,
    "FILECOIN_RPC": "http://chain.invalid",
    "FILECOIN_STAKE_WALLET_ADDRESS": "0x" + "5a" * 20,
    "STAKE_CACHE_SECONDS": "0",
}


@pytest.fixture
async def priced(database_url: str, tmp_path: Path, clock: FrozenClock) -> AsyncIterator[World]:
    """A world on a server that prices work, ALICE holding 10,000 base units of stake."""
    s = make_settings(database_url, tmp_path / "priced", **PRICING)
    c = Container(settings=s, db=Database(s.resolved_database_url), clock=clock)
    chain = FakeChain()
    c.chain = FakeChainClient(chain)
    chain.mint(ALICE.address, 10_000)
    await c.chain.approve(ALICE, 10_000)
    await c.chain.add_funds(ALICE, ALICE.address.lower(), 10_000)
    app = create_app(c, run_migrations=False, start_jobs=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://parity.test") as http,
    ):
        yield await _world(http, c, clock)
    await c.db.dispose()


# -- acting as a runner ----------------------------------------------------------------------


async def claim_task(world: World, runner: Runner) -> dict[str, Any]:
    r = await claim(world.client, runner.token)
    assert r.status_code == 200, r.text
    runner.claim = r.json()
    assert runner.claim is not None and runner.claim["task"]["type"] == "fl_train"
    return runner.claim


async def fetch(world: World, runner: Runner, ref: dict[str, Any]) -> bytes:
    r = await world.client.get(f"{V1}/storage/download/{ref['cid']}", headers=bearer(runner.token))
    assert r.status_code == 200, r.text
    assert hashlib.sha256(r.content).hexdigest() == ref["sha256"]
    return r.content


async def trained(world: World, runner: Runner) -> dict[str, Any]:
    """Claim the runner's task, train from the global model on its partition, and return the
    update body (not yet posted)."""
    got = await claim_task(world, runner)
    config = got["task"]["config"]
    model = decode(await fetch(world, runner, config["global_model"]))
    with np.load(io.BytesIO(await fetch(world, runner, config["data"]))) as part:
        x, y = part["X"], part["y"]
    spec = parse_model_spec(config["model_type"], config["model_config"])
    result = train_local(
        spec, model, x, y, parse_train_config(config["train_config"]), config["seed"]
    )
    return {
        "session_id": config["session_id"],
        "round_id": config["round_id"],
        "claim_token": got["claim_token"],
        "task_id": got["task"]["id"],
        "weights": to_lists(result.weights),
        "data_size": result.num_examples,
        "loss": result.loss,
        "accuracy": result.accuracy,
        "training_time_ms": 5,
    }


async def post_update(world: World, runner: Runner, body: dict[str, Any]) -> httpx.Response:
    # Encoded here: httpx refuses NaN, which a broken runner may well send.
    return await world.client.post(
        f"{FL}/model-updates",
        content=json.dumps(body),
        headers={**bearer(runner.token), "Content-Type": "application/json"},
    )


async def submit(world: World, runner: Runner) -> dict[str, Any]:
    body = await trained(world, runner)
    r = await post_update(world, runner, body)
    assert r.status_code == 200, r.text
    return body


async def events_of(world: World, sid: str) -> list[str]:
    async with world.container.db.read_session() as s:
        q = select(Event.type).where(Event.resource_id == sid).order_by(Event.seq)
        return list((await s.scalars(q)).all())


def error(r: httpx.Response) -> tuple[int, str, Any]:
    err = r.json()["error"]
    return r.status_code, err["code"], err["details"].get("field")


# -- a whole session -------------------------------------------------------------------------


async def test_session_trains_from_the_global_model_round_by_round_and_learns(world: World):
    runners = await world.add_runners(3)
    loop = RoundsLoop(world.container.db, world.container.fl, interval=60.0)
    loop.start()  # woken by the last update of each round, not by its interval
    try:
        s = await world.started(total_rounds=4)
        sid = s["id"]
        assert (s["status"], s["current_round"], s["global_model"]["round"]) == ("active", 1, 0)
        models = [s["global_model"]["cid"]]
        for number in range(1, 5):
            for runner in runners:
                body = await submit(world, runner)
                assert body["round_id"] == (await world.round(sid, number))["id"]

            async def advanced(n: int = number) -> bool:
                return (await world.session(sid))["global_model"]["round"] == n

            await until(advanced)
            models.append((await world.session(sid))["global_model"]["cid"])
    finally:
        await loop.stop()
    assert len(set(models)) == 5  # every round moved the global model
    done = await world.session(sid)
    assert (done["status"], done["current_round"]) == ("completed", 4)
    r = await world.client.get(f"{FL}/sessions/{sid}/metrics", headers=world.auth)
    assert r.status_code == 200, r.text
    metrics = r.json()["rounds"]
    assert [m["round"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        assert m["participants"] == 3 and m["examples"] == 480  # 600 rows less the 20 % test
        assert 0 <= m["train_accuracy_weighted"] <= 1 and m["train_loss_mean"] > 0
        assert m["slowest_training_ms"] == 5 and m["coordination_overhead_ms"] >= 0
    assert metrics[-1]["test_accuracy"] > 0.7  # 10 classes: chance is 0.1
    assert metrics[-1]["test_loss"] < metrics[0]["test_loss"]
    assert await events_of(world, sid) == [
        "fl.session.started",
        *["fl.round.completed"] * 4,
        "fl.session.completed",
    ]


async def test_a_claim_carries_a_small_global_model_inline_and_a_large_one_by_cid_only(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    runners = await world.add_runners(3)
    await world.started()
    got = await claim_task(world, runners[0])
    ref = got["task"]["config"]["global_model"]
    inline = base64.b64decode(ref["data_base64"])
    assert inline == await fetch(world, runners[0], ref)  # the stored model, byte for byte
    async with world.container.db.read_session() as s:
        row = await s.get(Task, uuid.UUID(got["task"]["id"]))
        assert row is not None and "data_base64" not in row.config["global_model"]
    monkeypatch.setattr(claim_answer, "INLINE_MODEL_MAX_BYTES", len(inline) - 1)
    got = await claim_task(world, runners[1])
    ref = got["task"]["config"]["global_model"]
    assert set(ref) == {"cid", "sha256", "format"}
    assert hashlib.sha256(await fetch(world, runners[1], ref)).hexdigest() == ref["sha256"]

    async def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("the store broke mid-read")

    # The claim has committed before its answer is built: a failing read still answers it.
    monkeypatch.setattr(claim_answer.store_io, "get_bytes", broken)
    got = await claim_task(world, runners[2])
    assert set(got["task"]["config"]["global_model"]) == {"cid", "sha256", "format"}


async def test_each_participant_gets_only_its_own_disjoint_partition(world: World):
    runners = await world.add_runners(3)
    await world.started()
    seen: list[set[bytes]] = []
    indices = []
    for runner in runners:
        config = (await claim_task(world, runner))["task"]["config"]
        assert config["data"]["kind"] == "partition" and config["data"]["rows"] == 160
        assert config["num_participants"] == 3 and config["round"] == 1
        indices.append(config["participant_index"])
        assert config["global_model"]["format"] == "safetensors"
        assert config["train_config"] == {
            "learning_rate": 0.1,
            "batch_size": 16,
            "local_epochs": 5,
            "mu": 0.0,
        }
        with np.load(io.BytesIO(await fetch(world, runner, config["data"]))) as part:
            seen.append({row.tobytes() for row in part["X"]})
    assert sorted(indices) == [0, 1, 2]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("fedadam", {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}),
        ("fedmedian", {}),
        ("trimmed_mean", {"beta": 0.2}),
        ("krum", {"num_malicious": 0}),
    ],
)
async def test_every_aggregation_method_runs_its_rounds(
    world: World, method: str, params: dict[str, Any]
):
    runners = await world.add_runners(3)
    s = await world.started(
        total_rounds=2, config={"aggregation_method": method, "aggregation_params": params}
    )
    cids = [s["global_model"]["cid"]]
    for number in (1, 2):
        for runner in runners:
            await submit(world, runner)
        await world.tick()
        cids.append((await world.round(s["id"], number))["model_cid"])
    done = await world.session(s["id"])
    assert done["status"] == "completed" and len(set(cids)) == 3
    async with world.container.db.read_session() as session:
        row = await session.get(FLSession, uuid.UUID(s["id"]))
    assert row is not None and (row.opt_state_cid is not None) == (method == "fedadam")


async def test_start_refuses_labels_beyond_the_model_output(world: World):
    await world.add_runners(3)
    body = world.body(config={"model_config": {**MODEL, "output_size": 5}})
    r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
    assert r.status_code == 201, r.text
    r = await world.client.post(f"{FL}/sessions/{r.json()['id']}/start", headers=world.auth)
    assert error(r) == (422, "invalid_input", "config.model_config.output_size")


async def test_a_runner_dataset_session_takes_only_runners_serving_it(world: World):
    await world.add_runners(2)  # FL, but without the data set
    serving = []
    for _ in range(2):
        token, body = await register_runner(
            world.client, world.alice, device(), fl=True, fl_datasets=["digits"]
        )
        serving.append(Runner(token, str(body["runner"]["id"])))
    data = {"runner_dataset": "digits", "split_strategy": "non_iid", "seed": 3}
    data["metadata"] = {"alpha": 0.5}
    body = world.body(min_participants=3, training_data=data)
    r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    r = await world.client.post(f"{FL}/sessions/{sid}/start", headers=world.auth)
    assert error(r)[:2] == (409, "insufficient_runners")
    assert r.json()["error"]["message"].startswith(
        "insufficient online runners: need 3, have 2 serving runner_dataset 'digits'"
    )
    token, reg = await register_runner(
        world.client, world.alice, device(), fl=True, fl_datasets=["digits", "mnist"]
    )
    serving.append(Runner(token, str(reg["runner"]["id"])))
    r = await world.client.post(f"{FL}/sessions/{sid}/start", headers=world.auth)
    assert r.status_code == 200, r.text
    partitions = []
    for runner in serving:
        config = (await claim_task(world, runner))["task"]["config"]
        assert config["data"]["kind"] == "runner_dataset" and config["data"]["name"] == "digits"
        partitions.append(config["data"]["partition"])
    assert sorted(p["participant_index"] for p in partitions) == [0, 1, 2]
    assert {(p["strategy"], p["seed"], p["num_participants"]) for p in partitions} == {
        ("dirichlet", 3, 3)
    }


# -- update checks ---------------------------------------------------------------------------


async def test_update_refusals_name_the_reason(world: World):
    one, two, three = await world.add_runners(3)
    s = await world.started()
    body = await trained(world, one)
    bad_shape = {**body, "weights": {**body["weights"], "fc1.bias": [0.0] * 15}}
    code, name, where = error(await post_update(world, one, bad_shape))
    assert (code, name, where) == (422, "invalid_input", "weights.fc1.bias")
    nan = {**body, "weights": {**body["weights"], "fc2.bias": [math.nan] * 10}}
    code, name, where = error(await post_update(world, one, nan))
    assert (code, where) == (422, "weights.fc2.bias")
    # Another runner of the network posting for this round holds no slot in it.
    outsider = (await world.add_runners(1))[0]
    r = await post_update(world, outsider, body)
    assert error(r)[:2] == (403, "not_a_participant")
    # The claim token fences the task: another token is refused and nothing is accepted.
    forged = {**body, "claim_token": "ps_claim_" + "0" * 40}
    assert error(await post_update(world, one, forged))[:2] == (409, "claim_invalid")
    # The participant's update, then the same again with the same claim token.
    first = await post_update(world, one, body)
    assert first.status_code == 200, first.text
    again = await post_update(world, one, body)
    assert again.status_code == 200 and again.json() == first.json()
    assert first.json()["update"]["round"] == 1
    # Another update under the same claim is not a repeat: refused, the first one stands.
    changed_figure = {**body, "loss": body["loss"] + 0.5}
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in body["weights"].items()}
    weights["fc2.bias"] = weights["fc2.bias"] + np.float32(0.25)
    changed_weights = {**body, "weights": to_lists(weights)}
    for other in (changed_figure, changed_weights):
        r = await post_update(world, one, other)
        assert error(r)[:2] == (409, "update_conflict"), r.text
    assert (await post_update(world, one, body)).json() == first.json()
    rnd = await world.round(s["id"], 1)
    assert rnd["updates_received"] == 1
    assert error(await post_update(world, one, forged))[:2] == (409, "claim_invalid")
    # Late updates: the round's deadline passed (then the job closed it, failed: 1 of 3).
    late = [await trained(world, two), await trained(world, three)]
    world.clock.advance(world.container.fl.round_timeout_seconds + 1)
    closed = await post_update(world, two, late[0])
    assert error(closed)[:2] == (409, "round_closed")
    assert closed.json()["error"]["details"]["deadline_at"].endswith("Z")
    await world.tick()
    assert (await world.round(s["id"], 1))["status"] == "failed"
    assert error(await post_update(world, three, late[1]))[:2] == (409, "round_closed")


async def test_a_large_model_is_checked_off_the_loop_with_the_same_result(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    one, two = await world.add_runners(2)
    await world.started(min_participants=2)
    got = await claim_task(world, one)
    model = to_lists(decode(await fetch(world, one, got["task"]["config"]["global_model"])))
    bodies = []
    for runner in (one, two):
        c = runner.claim or await claim_task(world, runner)
        conf = c["task"]["config"]
        bodies.append(
            {
                "session_id": conf["session_id"],
                "round_id": conf["round_id"],
                "claim_token": c["claim_token"],
                "task_id": c["task"]["id"],
                "weights": model,
                "data_size": 10,
                "loss": 0.5,
                "accuracy": 0.5,
                "training_time_ms": 1,
            }
        )
    threads: list[object] = []
    real = updates.asyncio.to_thread

    async def counted(fn: Any, *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "from_json":  # the JSON tensors' check and encoding
            threads.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(updates.asyncio, "to_thread", counted)
    assert (await post_update(world, one, bodies[0])).status_code == 200  # small: on the loop
    assert threads == []
    monkeypatch.setattr(updates, "INLINE_CHECK_VALUES", 0)  # every model counts as large
    nan = {**bodies[1], "weights": {**model, "fc2.bias": [math.nan] * 10}}
    assert error(await post_update(world, two, nan))[::2] == (422, "weights.fc2.bias")
    assert (await post_update(world, two, bodies[1])).status_code == 200
    assert len(threads) == 2
    async with world.container.db.read_session() as s:
        cids = (await s.scalars(select(FLRoundSlot.update_cid))).all()
    assert len(cids) == 2 and cids[0] == cids[1]  # the same weights, the same stored file


# -- deadlines, drops, failures --------------------------------------------------------------


async def test_min_share_lets_a_round_complete_without_a_silent_participant(world: World):
    runners = await world.add_runners(4)
    s = await world.started(min_participants=4, config={"min_share": 0.75})
    sid = s["id"]
    for runner in runners[:3]:
        await submit(world, runner)
    await world.tick()
    assert (await world.round(sid, 1))["status"] == "collecting"  # waits for the deadline
    world.clock.advance(world.container.fl.round_timeout_seconds)
    await world.tick()
    done = await world.round(sid, 1)
    assert (done["status"], done["updates_received"], done["dropped"]) == ("completed", 3, 1)
    assert done["metrics"]["participants"] == 3
    nxt = await world.round(sid, 2)
    assert (nxt["status"], nxt["participants"], nxt["required_updates"]) == ("collecting", 4, 3)
    # The silent participant's task of round 1 was ended; it holds round 2's task now.
    got = await claim_task(world, runners[3])
    assert got["task"]["config"]["round"] == 2


async def test_too_few_updates_by_the_deadline_fail_the_round_and_the_session(world: World):
    runners = await world.add_runners(4)
    s = await world.started(min_participants=4, config={"min_share": 0.75})
    sid = s["id"]
    for runner in runners[:2]:
        await submit(world, runner)
    world.clock.advance(world.container.fl.round_timeout_seconds)
    await world.tick()
    reason = "round 1: 2 of 4 updates by the deadline, 3 required (min_share 0.75)"
    assert (await world.round(sid, 1))["failure_reason"] == reason
    failed = await world.session(sid)
    assert (failed["status"], failed["failure_reason"]) == ("failed", reason)
    assert (await events_of(world, sid))[-1] == "fl.session.failed"
    r = await claim(world.client, runners[3].token)
    assert r.status_code == 204  # its task was cancelled with the round


async def test_a_failed_task_drops_its_participant_and_the_round_closes_without_waiting(
    world: World,
):
    runners = await world.add_runners(4)
    s = await world.started(min_participants=4, config={"min_share": 0.75})
    sid = s["id"]
    for runner in runners[:3]:
        await submit(world, runner)
    got = await claim_task(world, runners[3])
    r = await act(
        world.client,
        runners[3].token,
        got["task"]["id"],
        "fail",
        got["claim_token"],
        error="out of memory",
    )
    assert r.status_code == 200 and r.json()["status"] == "failed"  # max_attempts is 1
    await world.tick()  # drops it, closes the round (nothing left to wait for), aggregates
    done = await world.round(sid, 1)
    assert (done["status"], done["updates_received"], done["dropped"]) == ("completed", 3, 1)
    assert (await world.session(sid))["current_round"] == 2


async def test_a_released_task_is_offered_to_its_participant_again(world: World):
    runners = await world.add_runners(3)
    s = await world.started()
    got = await claim_task(world, runners[0])
    r = await act(world.client, runners[0].token, got["task"]["id"], "release", got["claim_token"])
    assert r.status_code == 200 and r.json()["status"] == "pending"
    assert (await claim(world.client, runners[0].token)).status_code == 204  # untargeted now
    assert await world.tick() == 1
    for runner in runners:
        await submit(world, runner)
    await world.tick()
    assert (await world.round(s["id"], 1))["status"] == "completed"


async def test_an_offline_participant_is_replaced_between_rounds(world: World):
    runners = await world.add_runners(3)
    s = await world.started(config={"min_share": 0.6})
    sid = s["id"]
    bodies = {runner.id: await trained(world, runner) for runner in runners}
    gone = runners[2]
    for runner in runners[:2]:
        assert (await post_update(world, runner, bodies[runner.id])).status_code == 200
    assert (await heartbeat(world.client, gone.token, status="offline")).status_code == 200
    spare = (await world.add_runners(1))[0]
    world.clock.advance(world.container.fl.round_timeout_seconds)
    await world.tick()
    assert (await world.round(sid, 1))["status"] == "completed"
    config = (await claim_task(world, spare))["task"]["config"]
    assert config["round"] == 2
    assert gone.claim is not None
    index = gone.claim["task"]["config"]["participant_index"]
    assert config["participant_index"] == index
    r = await world.client.get(f"{FL}/sessions/{sid}/participants", headers=world.auth)
    assert r.status_code == 200, r.text
    rows = r.json()["participants"]
    replaced = [p for p in rows if p["status"] == "replaced"]
    assert [(p["runner_id"], p["participant_index"]) for p in replaced] == [(gone.id, index)]
    assert sum(p["status"] == "active" for p in rows) == 3
    assert (r.json()["count"], r.json()["next_cursor"]) == (4, None)
    # Page by page, one row each: the same four rows in the same order (the replaced row and
    # its successor share an index), then no next page.
    paged: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        r = await world.client.get(
            f"{FL}/sessions/{sid}/participants", params=params, headers=world.auth
        )
        assert r.status_code == 200, r.text
        paged += r.json()["participants"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert paged == rows
    r = await world.client.get(
        f"{FL}/sessions/{sid}/participants", params={"cursor": "bm9wZQ"}, headers=world.auth
    )
    assert error(r) == (422, "invalid_input", "cursor")


# -- rewards ---------------------------------------------------------------------------------


async def test_each_accepted_update_earns_its_share_of_the_round_pool_once(priced: World):
    bob = await sign_in(priced.client, BOB)
    runners = await priced.add_runners(3, owner=bob)
    s = await priced.started(
        min_participants=3, total_rounds=2, reward_pool="3001", config={"min_share": 0.6}
    )
    sid = s["id"]
    for number in (1, 2):
        for runner in runners[: 3 if number == 1 else 2]:  # one stays silent in round 2
            await submit(priced, runner)
        if number == 2:
            priced.clock.advance(priced.container.fl.round_timeout_seconds)
        await priced.tick()
        await priced.tick()  # a second pass pays nothing again
    assert (await priced.session(sid))["status"] == "completed"
    async with priced.container.db.read_session() as db:
        postings = (await db.scalars(select(Posting).where(Posting.kind == "fl_reward"))).all()
        credits = (
            await db.scalars(
                select(Entry).where(
                    Entry.posting_id.in_([p.id for p in postings]),
                    Entry.account == BOB.address.lower(),
                )
            )
        ).all()
        pool = await db.scalar(select(Reservation).where(Reservation.source_id == sid))
    # Each round's pool is 3001 // 2 = 1500, split by examples: 500 each of 3 equal partitions
    # in round 1, 750 each of the 2 that reported in round 2; the 10 % protocol fee comes off.
    paid = sorted((p.source_id.split(":", 1)[1], p.facts["amount"]) for p in postings)
    assert [amount for _, amount in paid] == ["500", "500", "500", "750", "750"]
    assert len({key for key, _ in paid}) == 5  # once per (session, round, participant)
    assert sum(e.amount for e in credits) == 3000 * 9 // 10
    assert pool is not None and pool.status == "released" and pool.price["released"] == "1"


async def test_an_fl_train_tasks_reward_points_to_its_sessions_pool(priced: World):
    runners = await priced.add_runners(2)
    await priced.started(min_participants=2, total_rounds=1, reward_pool="1000")
    task = (await claim_task(priced, runners[0]))["task"]
    r = await priced.client.get(f"{V1}/tasks/{task['id']}/reward", headers=priced.auth)
    assert r.status_code == 200, r.text
    reward = r.json()
    # Not "created while pricing was off": pricing is on, the pool pays the update.
    assert (reward["status"], reward["price"], reward["reward"]) == ("not_priced", None, None)
    assert "reward pool" in reward["message"]


# -- re-entrant aggregation ------------------------------------------------------------------


async def _round_in_aggregation(world: World) -> tuple[str, FLRound]:
    runners = await world.add_runners(3)
    s = await world.started()
    for runner in runners:
        await submit(world, runner)
    assert await close_due_rounds(world.container.db, world.container.fl) == 1
    async with world.container.db.read_session() as session:
        rnd = await session.scalar(select(FLRound).where(FLRound.number == 1))
    assert rnd is not None and rnd.status == "aggregating"
    return s["id"], rnd


async def test_an_aggregation_computed_twice_is_applied_once(world: World):
    sid, rnd = await _round_in_aggregation(world)
    c = world.container
    async with c.db.read_session() as session:
        fl_session = await session.get(FLSession, rnd.session_id)
        slots = await rounds_repo.submitted_slots(session, rnd.id)
    assert fl_session is not None
    first = await aggregate.compute_round(c.fl, fl_session, rnd, slots)
    second = await aggregate.compute_round(c.fl, fl_session, rnd, slots)
    assert (first.model_cid, first.metrics) == (second.model_cid, second.metrics)
    applied = []
    for agg in (first, second):
        async with c.db.transaction() as session:
            applied.append(await aggregate.apply_round(session, c.fl, agg))
    assert applied == [True, False]
    assert await aggregate.aggregate_round(c.db, c.fl, rnd.id) is False
    assert (await events_of(world, sid)).count("fl.round.completed") == 1
    async with c.db.read_session() as session:
        count = await session.scalar(select(func.count()).select_from(FLRound))
    assert count == 2  # round 2 opened once
    assert (await world.session(sid))["global_model"]["cid"] == first.model_cid


async def test_a_small_round_computed_on_the_loop_equals_the_worker_thread_result(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    # Small models are folded, scored and encoded on the loop's thread; the same round with
    # every budget at 0 goes through worker threads and must give the same model and metrics.
    _, rnd = await _round_in_aggregation(world)
    c = world.container
    async with c.db.read_session() as session:
        fl_session = await session.get(FLSession, rnd.session_id)
        slots = await rounds_repo.submitted_slots(session, rnd.id)
    assert fl_session is not None and fl_session.test_cid is not None
    hops: list[str] = []
    real = aggregate.asyncio.to_thread

    async def counted(fn: Any, *args: Any) -> Any:
        # The round's own work only: the content store may also write in a worker thread
        # (it does when its recent writes were slow, as on a loaded machine).
        if not getattr(fn, "__module__", "").startswith("parity.storage"):
            hops.append(getattr(fn, "__name__", "?"))
        return await real(fn, *args)

    monkeypatch.setattr(aggregate.asyncio, "to_thread", counted)
    inline = await aggregate.compute_round(c.fl, fl_session, rnd, slots)
    assert hops in ([], ["decode_arrays"])  # the held-out split, read once per session
    hops.clear()
    for name in ("INLINE_FOLD_VALUES", "INLINE_EVAL_WORK", "INLINE_ENCODE_VALUES"):
        monkeypatch.setattr(aggregate, name, 0)
    threaded = await aggregate.compute_round(c.fl, fl_session, rnd, slots)
    assert hops == ["finish", "evaluate", "encode"]
    assert (inline.model_cid, inline.metrics) == (threaded.model_cid, threaded.metrics)
    assert inline.metrics["test_accuracy"] is not None


async def test_a_round_left_mid_aggregation_is_finished_after_a_restart(world: World):
    sid, _ = await _round_in_aggregation(world)
    # A new server process on the same database (nothing cached in memory): its rounds job
    # finds the round in aggregation and finishes it.
    aggregate.MODELS.clear()
    aggregate.TESTS.clear()
    restarted = Container(
        settings=world.container.settings, db=world.container.db, clock=world.clock
    )
    try:
        assert await RoundsLoop(restarted.db, restarted.fl, interval=60.0).run_once() >= 1
    finally:
        await restarted.close_content_store()
    assert (await world.round(sid, 1))["status"] == "completed"
    assert (await world.session(sid))["current_round"] == 2


async def test_a_stored_update_file_is_accepted_by_cid(world: World):
    runners = await world.add_runners(3)
    s = await world.started()
    body = await trained(world, runners[0])
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in body.pop("weights").items()}
    data = encode(weights)
    r = await world.client.put(
        f"{V1}/storage/upload", content=data, headers=bearer(runners[0].token)
    )
    assert r.status_code == 201, r.text
    body["update_cid"] = r.json()["cid"]
    body["update_sha256"] = hashlib.sha256(data).hexdigest()
    r = await post_update(world, runners[0], body)
    assert r.status_code == 200, r.text
    assert (await world.round(s["id"], 1))["updates_received"] == 1


async def test_an_update_with_any_one_wrong_value_is_refused_below_500(world: World):
    """Each top-level value of a real update, each tensor, its first row and first value, set
    to a wrong value or removed: never a 500, and every refusal names what it refused. A value
    an update may carry is accepted, and the sweep goes on with the next participant's update
    (the round's next one, once all three have reported)."""
    runners = await world.add_runners(3)
    s = await world.started(total_rounds=20)
    pending = [(r, await trained(world, r)) for r in runners]
    body = pending[0][1]
    places: list[tuple[Any, ...]] = [(key,) for key in body]
    for name, tensor in body["weights"].items():
        places += [("weights", name), ("weights", name, 0)]
        if isinstance(tensor[0], list):
            places.append(("weights", name, 0, 0))
    wrong: list[Any] = [None, "x", "\ud800", -1, 10**30, 1e308, [], {}, True, [[1.0]], {"a": 1}]
    failures: list[str] = []
    accepted: list[tuple[tuple[Any, ...], Any]] = []
    for place in places:
        for value in [*wrong, "<removed>"]:
            runner, body = pending[0]
            mutant = json.loads(json.dumps(body))
            parent = mutant
            for step in place[:-1]:
                parent = parent[step]
            if value == "<removed>":
                del parent[place[-1]]
            else:
                parent[place[-1]] = value
            r = await post_update(world, runner, mutant)
            if r.status_code == 200:
                accepted.append((place, value))
                pending.pop(0)
                if not pending:  # the round is complete: the next one opens
                    number = len(accepted) // 3 + 1
                    await until(lambda n=number: _round_open(world, s["id"], n))
                    pending = [(r, await trained(world, r)) for r in runners]
                continue
            if r.status_code >= 500 or not r.json()["error"]["message"]:
                failures.append(f"{place} = {value!r:.30}: {r.status_code} {r.text[:150]}")
    assert not failures, "\n".join(failures[:20])
    # Only values an update may carry: a task id left out, a larger example count (capped at
    # the partition), a wider accuracy or loss within range.

    def carried(place: tuple[Any, ...], value: Any) -> bool:
        """Whether an update may carry ``value`` at ``place``."""
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if place == ("task_id",):
            return value in (None, "<removed>")  # optional: the claim token names the task
        if place == ("loss",):
            return number and 0 <= value < math.inf
        if place[0] == "weights" and len(place) == len(np.shape(body["weights"][place[1]])) + 2:
            return number and bool(np.isfinite(np.float32(value)))
        return False

    assert [a for a in accepted if not carried(*a)] == []
    assert 0 < len(accepted) < len(places)
    # What the accepted extremes (a loss of 1e308, a weight of 1e19) did to the session reads.
    await world.tick()
    for path in ("", "/rounds", "/metrics", "/model", "/participants", "/rounds/1"):
        r = await world.client.get(f"{FL}/sessions/{s['id']}{path}", headers=world.auth)
        assert r.status_code == 200, (path, r.text[:300])


async def _round_open(world: World, sid: str, number: int) -> bool:
    await world.tick()
    r = await world.client.get(f"{FL}/sessions/{sid}/rounds/{number}", headers=world.auth)
    return r.status_code == 200 and r.json()["status"] == "collecting"
