"""Differential privacy in federated-learning sessions, in process (issue "FL privacy", DP half):
both ``privacy_config`` forms are accepted and stored normalized; in central mode the server
clips every update (an enormous one moves the model by at most C/m plus the noise) and adds
Gaussian noise of scale z*C/m to the mean; every round reports the accountant's epsilon, the
session read the running figure, and the session stops as ``budget_exhausted`` before the round
that would pass ``max_epsilon``, keeping the last model within budget; adaptive clipping carries
its clip norm from round to round; participant sampling takes a Poisson sample per round (an
empty one aggregates noise alone); in local mode the task carries the runner's settings and
the real runner executor posts a clipped, noised update, which is all the server stores."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from parity.agent.client import ServerClient
from parity.agent.executors import CancelToken
from parity.agent.fl import FlExecutor, local_dp
from parity.core.fl.dp import clip_update, joint_l2_norm, model_delta
from parity.core.fl.dp_accountant import epsilon_after
from parity.core.fl.dp_config import DPConfig
from parity.core.fl.model import parse_model_spec
from parity.core.fl.tensors import decode, to_lists
from parity.core.fl.train import parse_train_config, train_local
from parity.fl import privacy
from parity.fl.models import FLRoundSlot
from tests.integration.test_fl_rounds import (
    FL,
    V1,
    Runner,
    World,
    claim_task,
    error,
    events_of,
    fetch,
    post_update,
    submit,
    world,
)

__all__ = ["world"]  # the fixture, imported for the tests below

Weights = dict[str, np.ndarray]
DELTA = 1e-5


def central(z: float = 1.0, clip: float = 1.0, **extra: Any) -> dict[str, Any]:
    dp = {"mode": "central", "noise_multiplier": z, "l2_norm_clip": clip, "delta": DELTA}
    return {"differential_privacy": {**dp, **extra}}


def local(z: float = 0.5, clip: float = 1.0) -> dict[str, Any]:
    dp = {"mode": "local", "noise_multiplier": z, "l2_norm_clip": clip, "delta": DELTA}
    return {"differential_privacy": dp}


def seeded(monkeypatch: pytest.MonkeyPatch, module: Any, seed: int) -> None:
    """Make ``module.noise_rng`` reproducible (the server and the runner draw from the OS)."""
    monkeypatch.setattr(module, "noise_rng", lambda: np.random.default_rng(seed))


async def model_at(world: World, cid: str) -> Weights:
    r = await world.client.get(f"{V1}/storage/download/{cid}", headers=world.auth)
    assert r.status_code == 200, r.text
    return decode(r.content)


async def post_weights(
    world: World, runner: Runner, make: Callable[[Weights], Weights]
) -> dict[str, Any]:
    """Claim the runner's task and post ``make(global model)`` as its update."""
    got = await claim_task(world, runner)
    config = got["task"]["config"]
    body = {
        "session_id": config["session_id"],
        "round_id": config["round_id"],
        "claim_token": got["claim_token"],
        "task_id": got["task"]["id"],
        "weights": to_lists(make(decode(await fetch(world, runner, config["global_model"])))),
        "data_size": 10,
        "loss": 1.0,
        "accuracy": 0.5,
        "training_time_ms": 5,
    }
    r = await post_update(world, runner, body)
    assert r.status_code == 200, r.text
    return config


async def metrics(world: World, sid: str) -> list[dict[str, Any]]:
    r = await world.client.get(f"{FL}/sessions/{sid}/metrics", headers=world.auth)
    assert r.status_code == 200, r.text
    rounds: list[dict[str, Any]] = r.json()["rounds"]
    return rounds


def dp(z: float = 1.0, clip: float = 1.0, **extra: Any) -> DPConfig:
    return DPConfig(mode="central", noise_multiplier=z, delta=DELTA, l2_norm_clip=clip, **extra)


# -- configuration -----------------------------------------------------------------------------


async def test_the_nested_and_the_original_flat_form_are_stored_alike(world: World):
    flat = {
        "differential_privacy": True,
        "mode": "central",
        "noise_multiplier": 1.0,
        "l2_norm_clip": 1.0,
        "delta": DELTA,
        "secure_aggregation": False,
    }
    stored = []
    for form in (central(), flat):
        body = world.body(config={"privacy_config": form})
        r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
        assert r.status_code == 201, r.text
        stored.append(r.json()["config"]["privacy_config"])
        assert r.json()["privacy"] == {
            "mode": "central",
            "accountant": "rdp",
            "rounds": 0,
            "epsilon": 0.0,
            "delta": DELTA,
            "noise_multiplier": 1.0,
            "sampling_rate": 1.0,
            "max_epsilon": None,
            "rounds_within_budget": 3,
            "budget_exhausted": False,
        }
    assert (
        stored[0]
        == stored[1]
        == {
            "differential_privacy": {
                "mode": "central",
                "noise_multiplier": 1.0,
                "l2_norm_clip": 1.0,
                "delta": DELTA,
                "max_epsilon": None,
                "sampling_rate": None,
            },
            "secure_aggregation": False,
        }
    )


@pytest.mark.parametrize(
    ("privacy_config", "method", "expected"),
    [
        # the flat form still needs the fields the original lacked
        (
            {"differential_privacy": True, "noise_multiplier": 1.0, "l2_norm_clip": 1.0},
            "fedavg",
            ("invalid_input", "config.privacy_config.mode"),
        ),
        (
            central(max_epsilon=1.0),
            "fedavg",
            ("invalid_input", "config.privacy_config.differential_privacy.max_epsilon"),
        ),
        (
            {**central(z=0.0, max_epsilon=100.0)},
            "fedavg",
            ("invalid_input", "config.privacy_config.differential_privacy.max_epsilon"),
        ),
        (
            {"differential_privacy": {**local()["differential_privacy"], "sampling_rate": 0.5}},
            "fedavg",
            ("incompatible_options", "config.privacy_config.differential_privacy.sampling_rate"),
        ),
        (
            central(),
            "fedmedian",
            ("incompatible_options", "config.privacy_config.differential_privacy"),
        ),
    ],
)
async def test_a_dp_config_that_cannot_work_is_refused_naming_the_field(
    world: World, privacy_config: dict[str, Any], method: str, expected: tuple[str, str]
):
    body = world.body(config={"privacy_config": privacy_config, "aggregation_method": method})
    r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
    assert error(r) == (422, *expected), r.text


# -- central mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("z", [0.0, 0.5])
async def test_an_enormous_update_moves_the_model_by_at_most_the_clip_over_m_plus_noise(
    world: World, monkeypatch: pytest.MonkeyPatch, z: float
):
    seeded(monkeypatch, privacy, 11)
    clip, m = 0.5, 3
    runners = await world.add_runners(m)
    s = await world.started(total_rounds=1, config={"privacy_config": central(z=z, clip=clip)})
    before = await model_at(world, s["global_model"]["cid"])
    await post_weights(world, runners[0], lambda g: {n: a + 1e6 for n, a in g.items()})
    for runner in runners[1:]:
        await post_weights(world, runner, lambda g: g)  # no change at all
    await world.tick()
    done = await world.session(s["id"])
    assert done["status"] == "completed", done["failure_reason"]
    moved = model_delta(await model_at(world, done["global_model"]["cid"]), before)
    size = sum(a.size for a in before.values())
    [figures] = await metrics(world, s["id"])
    assert figures["dp_num_clipped"] == 1 and figures["dp_expected_updates"] == m
    assert figures["dp_noise_std"] == pytest.approx(z * clip / m)
    if z == 0:
        # exactly the clipped update over m, in the direction the update pointed
        assert joint_l2_norm(moved) == pytest.approx(clip / m, rel=1e-4)
        direction = np.concatenate([a.ravel() for a in moved.values()]) / (clip / m)
        assert np.allclose(direction, 1 / np.sqrt(size), atol=1e-4)
    else:
        # the noise has sd z*C/m per coordinate: its norm stays under sd * (sqrt(d) + 6)
        # except with probability exp(-18)
        bound = clip / m + z * clip / m * (np.sqrt(size) + 6)
        assert joint_l2_norm(moved) <= bound
        # and the 1e6 itself is nowhere near
        assert max(float(np.abs(a).max()) for a in moved.values()) < 1.0


def test_the_central_noise_has_standard_deviation_z_c_over_the_expected_count():
    z, clip, population = 0.7, 2.0, 5
    reference = {"w": np.zeros((400, 500), np.float32), "b": np.zeros(500, np.float32)}
    fold = privacy.CentralRound(dp(z, clip), reference, privacy.RoundContext(clip, population))
    for _ in range(3):  # unchanged models: zero deltas, so what comes out is the noise
        fold.add(reference)
    weights, figures = fold.finish(np.random.default_rng(2024))
    noise = np.concatenate([a.ravel() for a in weights.values()]).astype(np.float64)
    sigma = z * clip / population  # the fixed denominator q*N = 5, not the 3 that reported
    assert figures["dp_noise_std"] == pytest.approx(sigma)
    # 200,500 draws: the sample sd is within 1 % of sigma (about 6 standard errors) and the
    # mean within 6 standard errors of 0; the seed is fixed, so this cannot flake.
    assert np.std(noise) == pytest.approx(sigma, rel=0.01)
    assert abs(np.mean(noise)) < 6 * sigma / np.sqrt(noise.size)


def test_the_mean_divides_by_the_expected_count_not_by_who_reported():
    reference = {"w": np.zeros(4, np.float32)}
    fold = privacy.CentralRound(dp(0.0, 10.0), reference, privacy.RoundContext(10.0, 4))
    fold.add({"w": np.array([1, 2, 3, 4], np.float32)})
    fold.add({"w": np.array([3, 2, 1, 0], np.float32)})
    weights, figures = fold.finish(np.random.default_rng(0))
    assert weights["w"].tolist() == [1.0, 1.0, 1.0, 1.0]  # (4, 4, 4, 4) / 4
    assert (figures["dp_num_updates"], figures["dp_num_clipped"]) == (2, 0)


async def test_every_round_reports_the_accountants_epsilon_and_the_session_the_total(
    world: World,
):
    runners = await world.add_runners(3)
    s = await world.started(total_rounds=3, config={"privacy_config": central(z=1.0)})
    for _ in range(3):
        for runner in runners:
            await submit(world, runner)
        await world.tick()
    done = await world.session(s["id"])
    assert done["status"] == "completed", done["failure_reason"]
    figures = await metrics(world, s["id"])
    config = dp(1.0)
    assert [f["epsilon"] for f in figures] == [epsilon_after(config, n) for n in (1, 2, 3)]
    assert all(f["dp_mode"] == "central" and f["dp_delta"] == DELTA for f in figures)
    assert figures[0]["epsilon"] < figures[1]["epsilon"] < figures[2]["epsilon"]
    assert done["privacy"]["epsilon"] == epsilon_after(config, 3)
    assert done["privacy"]["rounds"] == 3 and done["privacy"]["budget_exhausted"] is False
    round_read = await world.round(s["id"], 2)
    assert round_read["metrics"]["epsilon"] == epsilon_after(config, 2)


async def test_the_session_stops_before_the_round_that_would_pass_the_budget(world: World):
    config = dp(1.0)
    e2, e3 = epsilon_after(config, 2), epsilon_after(config, 3)
    budget = (e2 + e3) / 2  # rounds 1 and 2 fit, round 3 would not
    runners = await world.add_runners(3)
    s = await world.started(
        total_rounds=5, config={"privacy_config": central(z=1.0, max_epsilon=budget)}
    )
    assert s["privacy"]["rounds_within_budget"] == 2
    for _ in range(2):
        for runner in runners:
            await submit(world, runner)
        await world.tick()
    done = await world.session(s["id"])
    assert done["status"] == "failed"
    assert done["failure_reason"].startswith("budget_exhausted: ")
    assert "max_epsilon" in done["failure_reason"]
    assert done["privacy"]["budget_exhausted"] is True
    assert done["privacy"]["epsilon"] == e2 <= budget
    # the model is round 2's: the last one within budget; round 3 never opened
    assert done["global_model"]["round"] == 2 and done["current_round"] == 2
    assert done["global_model"]["cid"] == (await world.round(s["id"], 2))["model_cid"]
    r = await world.client.get(f"{FL}/sessions/{s['id']}/rounds/3", headers=world.auth)
    assert r.status_code == 404
    assert (await events_of(world, s["id"]))[-1] == "fl.session.failed"


async def test_adaptive_clipping_carries_its_clip_norm_from_round_to_round(world: World):
    adaptive = {"initial": 0.05, "target_quantile": 0.5, "learning_rate": 0.2}
    dp_config = {
        "mode": "central",
        "noise_multiplier": 0.1,
        "adaptive_clipping": adaptive,
        "delta": DELTA,
    }
    runners = await world.add_runners(3)
    s = await world.started(
        total_rounds=3, config={"privacy_config": {"differential_privacy": dp_config}}
    )
    for _ in range(3):
        for runner in runners:
            await submit(world, runner)
        await world.tick()
    assert (await world.session(s["id"]))["status"] == "completed"
    stored = []
    for n in (1, 2, 3):
        stored.append((await world.round(s["id"], n))["metrics"])
    assert stored[0]["dp_clip_norm"] == 0.05
    # trained updates are far larger than 0.05: all clipped, so the clip grows
    assert stored[0]["dp_num_clipped"] == 3
    assert stored[1]["dp_clip_norm"] > stored[0]["dp_clip_norm"]
    assert stored[2]["dp_clip_norm"] > stored[1]["dp_clip_norm"]


async def test_sampling_takes_a_poisson_sample_of_the_participants_each_round(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    q, n = 0.5, 6
    draws = np.random.default_rng(3).random(n)
    seeded(monkeypatch, privacy, 3)  # the same generator decides the sample
    runners = await world.add_runners(n)
    s = await world.started(
        total_rounds=1,
        min_participants=n,
        config={"privacy_config": central(z=0.5, sampling_rate=q)},
    )
    chosen = {i for i in range(n) if draws[i] < q}
    assert 0 < len(chosen) < n
    first = await world.round(s["id"], 1)
    assert (first["participants"], first["required_updates"]) == (len(chosen), len(chosen))
    async with world.container.db.read_session() as session:
        slots = (await session.scalars(select(FLRoundSlot))).all()
    assert {slot.participant_index for slot in slots} == chosen
    taking = [r for r in runners if any(str(x.runner_id) == r.id for x in slots)]
    for runner in taking:
        await submit(world, runner)
    await world.tick()
    [figures] = await metrics(world, s["id"])
    assert figures["participants"] == len(chosen)
    assert figures["dp_expected_updates"] == q * n  # the fixed denominator
    config = dp(0.5, sampling_rate=q)
    assert figures["epsilon"] == epsilon_after(config, 1) < epsilon_after(dp(0.5), 1)


async def test_a_sampled_round_that_drew_nobody_aggregates_noise_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    seeded(monkeypatch, privacy, 1)
    assert (np.random.default_rng(1).random(3) >= 0.01).all()  # nobody drawn at q = 0.01
    await world.add_runners(3)
    s = await world.started(
        total_rounds=1, config={"privacy_config": central(z=1.0, sampling_rate=0.01)}
    )
    assert (await world.round(s["id"], 1))["participants"] == 0
    await world.tick()
    done = await world.session(s["id"])
    assert done["status"] == "completed", done["failure_reason"]
    [figures] = await metrics(world, s["id"])
    assert figures["participants"] == 0 and figures["dp_num_updates"] == 0
    assert done["global_model"]["cid"] != s["global_model"]["cid"]  # noise moved it


# -- local mode --------------------------------------------------------------------------------


async def test_local_mode_tasks_carry_the_runner_settings_and_rounds_report_epsilon(
    world: World,
):
    runners = await world.add_runners(3)
    s = await world.started(total_rounds=2, config={"privacy_config": local(z=0.5, clip=1.0)})
    for _ in range(2):
        for runner in runners:
            await submit(world, runner)  # a clean update: the server cannot tell
            assert runner.claim is not None
            assert runner.claim["task"]["config"]["privacy"] == {
                "mode": "local",
                "noise_multiplier": 0.5,
                "l2_norm_clip": 1.0,
            }
        await world.tick()
    figures = await metrics(world, s["id"])
    config = DPConfig(mode="local", noise_multiplier=0.5, delta=DELTA, l2_norm_clip=1.0)
    assert [f["epsilon"] for f in figures] == [epsilon_after(config, n) for n in (1, 2)]
    assert all(f["dp_mode"] == "local" and "dp_clip_norm" not in f for f in figures)


class ViaApp(httpx.AsyncBaseTransport):
    """The runner's HTTP client sent through the test's in-process app."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        r = await self.client.request(
            request.method,
            request.url.raw_path.decode(),
            content=await request.aread(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)


async def test_the_runner_posts_a_clipped_noised_update_and_the_server_stores_only_that(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    z, clip = 0.5, 0.1
    seeded(monkeypatch, local_dp, 99)
    runner = (await world.add_runners(3))[0]  # the others' updates are not needed here
    await world.started(total_rounds=1, config={"privacy_config": local(z=z, clip=clip)})
    got = await claim_task(world, runner)
    task, config = got["task"], got["task"]["config"]
    global_weights = decode(await fetch(world, runner, config["global_model"]))
    with np.load(io.BytesIO(await fetch(world, runner, config["data"]))) as part:
        x, y = part["X"], part["y"]
    spec = parse_model_spec(config["model_type"], config["model_config"])
    clean = train_local(
        spec, global_weights, x, y, parse_train_config(config["train_config"]), config["seed"]
    ).weights
    client = ServerClient("http://parity.test", transport=ViaApp(world.client))
    client.runner_token = runner.token
    executor = FlExecutor(client)
    executor.claim_token_of = lambda _id: str(got["claim_token"])

    async def logs(_lines: list[str]) -> None:
        return None

    try:
        outcome = await executor.run(task, logs, CancelToken())
    finally:
        await client.close()
    assert outcome.ok, outcome.error
    async with world.container.db.read_session() as session:
        slot = await session.scalar(select(FLRoundSlot).where(FLRoundSlot.status == "submitted"))
    assert slot is not None and slot.update_cid is not None
    stored = await model_at(world, slot.update_cid)
    clipped = clip_update(model_delta(clean, global_weights), clip)
    assert clipped.norm > clip  # the clean update was larger than the clip
    noise = np.random.default_rng(99)  # drawn tensor by tensor in name order
    for name, base in sorted(global_weights.items()):
        want = base.astype(np.float64) + clipped.delta[name]
        want += noise.normal(0.0, z * clip, size=base.shape)
        np.testing.assert_allclose(stored[name], want.astype(np.float32), rtol=0, atol=1e-6)
        assert not np.allclose(stored[name], clean[name], atol=1e-3)
