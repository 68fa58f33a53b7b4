"""What an update counts for when the runners hold the data (``training_data.runner_dataset``),
and how a session says why it could not start or why a round failed; in process, on SQLite
and PostgreSQL, the test playing the runners through the runner API with hand-made updates.

Proven here: the server has no partition to bound a runner-local participant's ``data_size``,
so its first accepted update fixes its count (a later round counts at most that figure, a
stand-in fixes its own) and ``training_data.max_samples_per_participant`` caps every count,
in the round's metrics, the FedAvg weights, the reward shares and the secure (SecAgg+) path
alike; a start refused for want of runners serving the data set says so; a round whose every
update was refused fails saying why."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from parity.core.fl.quantize import encode_update, layout_of
from parity.core.fl.secagg import plan_round, round_context
from parity.core.fl.secagg_client import SecAggClient
from parity.core.fl.secagg_config import parse_secagg_fields
from parity.core.fl.tensors import decode, to_lists
from parity.ledger.models import Posting
from tests.integration.queue_helpers import act, device, heartbeat, register_runner
from tests.integration.test_fl_rounds import (
    FL,
    Runner,
    World,
    claim_task,
    error,
    fetch,
    post_update,
    priced,
    world,
)
from tests.integration.test_fl_secagg import SECAGG, Party, advertise, mask, share, unmask

__all__ = ["priced", "world"]  # the fixtures, imported for the tests below

DATASET = "fk"
MOST = 2**31 - 1  # the largest data_size an update may report


async def serving(world: World, n: int, dataset: str = DATASET) -> list[Runner]:
    """``n`` FL runners that advertise the runner-local data set ``dataset``."""
    added = []
    for _ in range(n):
        token, body = await register_runner(
            world.client, world.alice, device(), fl=True, fl_datasets=[dataset]
        )
        added.append(Runner(token, str(body["runner"]["id"])))
    world.runners += added
    return added


def local_body(
    world: World, dataset: str = DATASET, cap: Any = None, **over: Any
) -> dict[str, Any]:
    """A session on the runner-local data set ``dataset``; ``cap``: its
    ``max_samples_per_participant``; ``over``: top-level keys."""
    training: dict[str, Any] = {"runner_dataset": dataset, "split_strategy": "iid", "seed": 3}
    if cap is not None:
        training["max_samples_per_participant"] = cap
    return world.body(training_data=training, **over)


async def started_local(world: World, cap: int | None = None, **over: Any) -> str:
    body = local_body(world, cap=cap, **over)
    r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
    assert r.status_code == 201, r.text
    sid = str(r.json()["id"])
    r = await world.client.post(f"{FL}/sessions/{sid}/start", headers=world.auth)
    assert r.status_code == 200, r.text
    return sid


async def report(
    world: World, runner: Runner, data_size: int, shift: float = 0.0
) -> httpx.Response:
    """Claim the runner's task and post the global model moved by ``shift`` as its update,
    reporting ``data_size`` examples (a runner's word: the server never sees its data)."""
    got = runner.claim if runner.claim is not None else await claim_task(world, runner)
    runner.claim = None  # used: the next round's task is claimed afresh
    config = got["task"]["config"]
    assert config["data"]["kind"] == "runner_dataset"
    model = decode(await fetch(world, runner, config["global_model"]))
    body = {
        "session_id": config["session_id"],
        "round_id": config["round_id"],
        "claim_token": got["claim_token"],
        "weights": to_lists({k: v + np.float32(shift) for k, v in model.items()}),
        "data_size": data_size,
        "loss": 0.5,
        "accuracy": 0.5,
        "training_time_ms": 5,
    }
    return await post_update(world, runner, body)


async def round_examples(world: World, sid: str, number: int) -> int:
    done = await world.round(sid, number)
    assert done["status"] == "completed", done
    return int(done["metrics"]["examples"])


async def counts(world: World, sid: str) -> list[tuple[str, int | None]]:
    r = await world.client.get(f"{FL}/sessions/{sid}/participants", headers=world.auth)
    assert r.status_code == 200, r.text
    return [(p["status"], p["num_examples"]) for p in r.json()["participants"]]


async def by_index(world: World, runners: Sequence[Runner]) -> list[Runner]:
    """The runners in participant-index order (read from their round-1 tasks' configs; each
    keeps its claim for :func:`report`)."""
    order = {}
    for runner in runners:
        got = await claim_task(world, runner)
        order[got["task"]["config"]["participant_index"]] = runner
        runner.claim = got
    return [order[i] for i in sorted(order)]


async def model(world: World, sid: str) -> dict[str, np.ndarray]:
    r = await world.client.get(f"{FL}/sessions/{sid}/model/download", headers=world.auth)
    assert r.status_code == 200, r.text
    return decode(r.content)


# -- the bounds on a runner's word --------------------------------------------------------


async def test_max_samples_per_participant_caps_a_runner_reporting_two_billion(world: World):
    # The walk-through's report: one participant claims 2**31 - 1 examples of its own data and
    # moves the model by 1 everywhere; the two others report 100 and leave it as it is.
    runners = await serving(world, 3)
    sid = await started_local(world, cap=1000, total_rounds=1)
    assert (await world.session(sid))["training_data"]["max_samples_per_participant"] == 1000
    start = await model(world, sid)
    big, *rest = runners
    assert (await report(world, big, MOST, shift=1.0)).status_code == 200
    for runner in rest:
        assert (await report(world, runner, 100)).status_code == 200
    await world.tick()
    assert await round_examples(world, sid, 1) == 1000 + 100 + 100
    # The FedAvg weight follows the count: the model moved 1000/1200 of the outlier's step.
    final = await model(world, sid)
    for name, before in start.items():
        moved = np.asarray(final[name], np.float64) - before
        assert np.allclose(moved, 1000 / 1200, atol=1e-5), name


async def test_a_participants_first_accepted_count_bounds_its_later_rounds(world: World):
    runners = await serving(world, 3)
    sid = await started_local(world, total_rounds=2)
    ordered = await by_index(world, runners)
    assert await counts(world, sid) == [("active", None)] * 3  # nothing reported yet
    for runner, size in zip(ordered, (50, 100, 100), strict=True):
        assert (await report(world, runner, size)).status_code == 200
    await world.tick()
    assert await round_examples(world, sid, 1) == 250
    assert await counts(world, sid) == [("active", 50), ("active", 100), ("active", 100)]
    # Round 2: one grows its claim to 2**31 - 1, another to 5000, one reports fewer.
    for runner, size in zip(ordered, (MOST, 5000, 80), strict=True):
        assert (await report(world, runner, size)).status_code == 200
    await world.tick()
    assert await round_examples(world, sid, 2) == 50 + 100 + 80
    assert await counts(world, sid) == [("active", 50), ("active", 100), ("active", 100)]


async def test_each_round_pays_by_the_capped_counts(priced: World):
    runners = await serving(priced, 3)
    sid = await started_local(priced, cap=1000, total_rounds=1, reward_pool="1200")
    big, *rest = runners
    assert (await report(priced, big, MOST)).status_code == 200
    for runner in rest:
        assert (await report(priced, runner, 100)).status_code == 200
    await priced.tick()
    assert (await priced.session(sid))["status"] == "completed"
    async with priced.container.db.read_session() as db:
        postings = (await db.scalars(select(Posting).where(Posting.kind == "fl_reward"))).all()
    assert sorted(int(p.facts["amount"]) for p in postings) == [100, 100, 1000]


async def test_a_stand_in_fixes_its_own_count(world: World):
    runners = await serving(world, 3)
    sid = await started_local(world, total_rounds=2, config={"min_share": 0.6})
    ordered = await by_index(world, runners)
    for runner, size in zip(ordered, (100, 100, 100), strict=True):
        assert (await report(world, runner, size)).status_code == 200
    gone = ordered[2]
    assert (await heartbeat(world.client, gone.token, status="offline")).status_code == 200
    spare = (await serving(world, 1))[0]
    await world.tick()
    for runner, size in zip([*ordered[:2], spare], (100, 100, 300), strict=True):
        assert (await report(world, runner, size)).status_code == 200
    await world.tick()
    assert await round_examples(world, sid, 2) == 500
    # (The replaced row and its stand-in share index 2; the frozen clock gives them one
    # joined_at, so their order is the ids'.)
    assert sorted(await counts(world, sid)) == [
        ("active", 100),
        ("active", 100),
        ("active", 300),
        ("replaced", 100),
    ]


async def test_a_secure_round_counts_runner_local_examples_within_the_same_bounds(world: World):
    runners = await serving(world, 3)
    secure = {"privacy_config": {"secure_aggregation": dict(SECAGG)}}
    sid = await started_local(world, cap=1000, total_rounds=2, config=secure)
    for number, sizes in ((1, (5000, 100, 100)), (2, (5000, 5000, 50))):
        parties = await secure_parties(world, runners, sizes)
        await advertise(world, parties)
        await share(world, parties)
        await mask(world, parties)
        await unmask(world, parties)
        await world.tick()
        expected = 1000 + 100 + 100 if number == 1 else 1000 + 100 + 50
        assert await round_examples(world, sid, number) == expected
    assert sorted(n or 0 for _, n in await counts(world, sid)) == [100, 100, 1000]


async def secure_parties(
    world: World, runners: Sequence[Runner], sizes: Sequence[int]
) -> list[Party]:
    """The runners' SecAgg+ parties, by participant index, the one at index i reporting
    ``sizes[i]`` examples (a small step of the global model as its update)."""
    parties = []
    for runner in runners:
        got = await claim_task(world, runner)
        config = got["task"]["config"]
        secure = config["secure_aggregation"]
        model = decode(await fetch(world, runner, config["global_model"]))
        layout = sorted(layout_of(model))
        delta = {k: np.full(v.shape, 0.01) for k, v in model.items()}
        cfg = parse_secagg_fields(secure, "secure_aggregation")
        size = sum(math.prod(shape) for _, shape in layout) + 1
        setups = plan_round(
            [str(i) for i in secure["participants"]],
            cfg,
            bytes.fromhex(secure["graph_seed"]),
            round_context(config["session_id"], config["round"]),
            size,
        )
        index = int(config["participant_index"])
        examples = sizes[index]
        rng = np.random.default_rng(index)
        parties.append(
            Party(
                runner,
                got["task"]["id"],
                got["claim_token"],
                config,
                SecAggClient(setups[str(index)]),
                {k: v + 0.01 for k, v in model.items()},
                delta,
                examples,
                encode_update(delta, examples, cfg, layout, rng),
                0.5,
                0.5,
            )
        )
    return sorted(parties, key=lambda p: p.index)


async def test_the_cap_is_refused_with_server_partitioned_data(world: World):
    body = world.body()
    body["training_data"]["max_samples_per_participant"] = 1000
    r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
    assert error(r) == (422, "invalid_input", "training_data.max_samples_per_participant")
    for bad in (0, -1, 2.5, "1000", True):
        r = await world.client.post(
            f"{FL}/sessions", json=local_body(world, cap=bad), headers=world.auth
        )
        assert error(r) == (422, "invalid_input", "training_data.max_samples_per_participant")


# -- saying why ------------------------------------------------------------------------------


async def test_too_few_runners_serving_the_data_set_says_only_those_count(world: World):
    await world.add_runners(4)  # FL runners, none serving the data set
    r = await world.client.post(
        f"{FL}/sessions", json=local_body(world, "nope"), headers=world.auth
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    r = await world.client.post(f"{FL}/sessions/{sid}/start", headers=world.auth)
    assert error(r)[:2] == (409, "insufficient_runners")
    err = r.json()["error"]
    assert err["message"] == (
        "insufficient online runners: need 3, have 0 serving runner_dataset 'nope' (only "
        "online FL runners that advertise that data set count; 4 FL runners are online "
        "without it)"
    )
    assert err["details"] == {
        "need": 3,
        "have": 0,
        "runner_dataset": "nope",
        "without_dataset": 4,
    }
    await serving(world, 2, "nope")
    r = await world.client.post(f"{FL}/sessions/{sid}/start", headers=world.auth)
    assert "have 2 serving runner_dataset 'nope'" in r.json()["error"]["message"]
    assert "4 FL runners are online without it" in r.json()["error"]["message"]


async def test_a_round_whose_every_update_was_refused_fails_saying_why(world: World):
    runners = await world.add_runners(3)
    s = await world.started(config={"max_update_norm": 0.001})
    sid = s["id"]
    refusals = []
    for runner in runners:
        r = await report_partitioned(world, runner)
        assert error(r)[:2] == (422, "invalid_input"), r.text
        # As the reference runner does: the task fails with the server's refusal.
        message = r.json()["error"]["message"]
        refusals.append(message)
        assert runner.claim is not None
        r = await act(
            world.client,
            runner.token,
            runner.claim["task"]["id"],
            "fail",
            runner.claim["claim_token"],
            error=f"the trained update is unusable: {message}",
        )
        assert r.status_code == 200, r.text
    await world.tick()
    failed = await world.session(sid)
    assert failed["status"] == "failed"
    reason = failed["failure_reason"]
    # The three refusals read the same (the same step from the same model): said once.
    assert len(set(refusals)) == 1
    assert reason == (
        "round 1: 0 of 3 updates before the other participants dropped out, 3 required "
        "(every participant must report); dropped: participants 0, 1, 2: its task was "
        f"failed: the trained update is unusable: {refusals[0]}"
    )
    assert "exceeds the bound of 0.001" in reason
    assert (await world.round(sid, 1))["failure_reason"] == reason


async def report_partitioned(world: World, runner: Runner) -> httpx.Response:
    """Claim the runner's task and post the global model moved by 0.5 everywhere."""
    got = await claim_task(world, runner)
    config = got["task"]["config"]
    model = decode(await fetch(world, runner, config["global_model"]))
    body = {
        "session_id": config["session_id"],
        "round_id": config["round_id"],
        "claim_token": got["claim_token"],
        "weights": to_lists({k: v + np.float32(0.5) for k, v in model.items()}),
        "data_size": 10,
        "loss": 0.5,
        "accuracy": 0.5,
        "training_time_ms": 5,
    }
    return await post_update(world, runner, body)


@pytest.mark.parametrize("cid", ["QmYourDatasetCID", "Qm" + "0" * 44])
async def test_a_malformed_cidv0_is_named_as_such(world: World, cid: str):
    body = world.body()
    body["training_data"]["dataset_cid"] = cid
    r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
    assert error(r) == (422, "invalid_input", "training_data.dataset_cid")
    message = r.json()["error"]["message"]
    assert "not a valid CIDv0 (a base58btc sha2-256 multihash" in message, message
    assert "multibase prefix" not in message
