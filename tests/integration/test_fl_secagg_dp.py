"""Central differential privacy on SecAgg+ rounds, in process, on SQLite and PostgreSQL (issue
"FL privacy": central DP noise, when asked, is added to the unmasked sum). The test acts as the
runners as ``test_fl_secagg`` does, clipping each trained update with the runner's own step
(:mod:`parity.agent.fl.local_dp`, read from the task's ``privacy``) and weighing it fully.
Proven here: the round's model is the equally weighted FedAvg of the clipped updates plus
Gaussian noise of sd z*C/m (the exact draw of a seeded generator, and an empirical sd to
match), the noise is added before anything is stored, epsilon is in the round's metrics and the
``max_epsilon`` stop keeps the last model within budget; with z = 0 the model is the clipped
mean within quantization error; adaptive clipping and participant sampling with secure
aggregation are 422 ``incompatible_options``, a fixed clip is accepted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from parity.agent.fl import local_dp
from parity.core.fl.aggregation import fedavg
from parity.core.fl.dp_config import DPConfig
from parity.core.fl.quantize import encode_update, layout_of, quantization_step
from parity.core.fl.secagg_config import parse_secagg_fields
from parity.core.fl.tensors import TensorError, decode
from parity.core.fl.train import TrainResult
from parity.fl import privacy
from tests.integration.test_fl_dp import metrics, seeded
from tests.integration.test_fl_rounds import FL, World, error, fetch
from tests.integration.test_fl_secagg import (
    SECAGG,
    Party,
    advertise,
    global_model,
    joined,
    mask,
    share,
    store_objects,
    unmask,
    world,
)

__all__ = ["world"]  # the fixture, imported for the tests below

DELTA = 1e-5
Weights = dict[str, np.ndarray]


def central(z: float, clip: float, **extra: Any) -> dict[str, Any]:
    dp = {"mode": "central", "noise_multiplier": z, "l2_norm_clip": clip, "delta": DELTA}
    return {"secure_aggregation": dict(SECAGG), "differential_privacy": {**dp, **extra}}


async def clip_like_the_runner(world: World, parties: list[Party], clip: float) -> Weights:
    """Each party clips its trained model as the runner does under central DP (the task's
    ``privacy`` read by the runner's parser, the runner's clipping step) and quantizes the
    clipped delta with a weight factor of 1; returns the round's global model."""
    cfg = parse_secagg_fields(SECAGG, "secure_aggregation")
    start: Weights = {}
    for p in parties:
        assert p.config["privacy"] == {"mode": "central", "l2_norm_clip": clip}
        _, applied = local_dp.split_task_privacy(p.config)
        assert applied is not None and (applied.mode, applied.noise_multiplier) == ("central", 0)
        start = decode(await fetch(world, p.runner, p.config["global_model"]))
        trained = TrainResult(p.weights, p.examples, p.loss, p.accuracy, steps=0)
        clipped, _ = local_dp.privatize(applied, trained, start)
        p.weights = dict(clipped.weights)
        p.delta = {n: np.asarray(p.weights[n], np.float64) - a for n, a in start.items()}
        assert np.sqrt(sum(float(np.sum(d * d)) for d in p.delta.values())) <= clip * 1.0001
        p.quantized = encode_update(
            p.delta,
            int(SECAGG["max_weight"]),
            cfg,
            sorted(layout_of(start)),
            np.random.default_rng(p.index),
        )
    return start


async def private_round(world: World, sid: str, clip: float) -> tuple[list[Party], Weights]:
    """One SecAgg+ round of three parties that clip; the parties and the round's start model."""
    parties = await joined(world, world.runners)
    unclipped = fedavg([(p.weights, p.examples) for p in parties])
    start = await clip_like_the_runner(world, parties, clip)
    # Clipping changes the updates (so the checks below tell clipped from plain FedAvg).
    mean = fedavg([(p.weights, 1) for p in parties])
    assert max(float(np.max(np.abs(mean[n] - unclipped[n]))) for n in mean) > 1e-2
    await advertise(world, parties)
    await share(world, parties)
    await mask(world, parties)
    await unmask(world, parties)
    await world.tick()  # unmask (and noise), aggregate, then stop or open round 2
    done = await world.round(sid, 1)
    assert done["status"] == "completed", done
    return parties, start


def tolerance() -> float:
    """How far the decoded mean of m equally weighted inputs may be from the exact one: each
    value's rounding moves it by under one step, the mean by under one step; plus float32."""
    step = quantization_step(float(SECAGG["clipping_range"]), int(SECAGG["quantization_range"]))
    return step + 1e-5


async def test_central_dp_on_a_secure_sum_is_the_clipped_fedavg_plus_noise_of_sd_z_c_over_m(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    seeded(monkeypatch, privacy, 31)
    z, clip, m = 1.0, 0.5, 3
    dp = DPConfig(mode="central", noise_multiplier=z, delta=DELTA, l2_norm_clip=clip)
    one, two = privacy.epsilon(dp, 1), privacy.epsilon(dp, 2)
    assert one is not None and two is not None
    await world.add_runners(m)
    config = {"privacy_config": central(z, clip, max_epsilon=(one + two) / 2)}
    s = await world.started(total_rounds=3, config=config)
    sid = s["id"]
    store = world.container.content_store
    before = await store.pins()  # the start model and the data splits are in already
    parties, start = await private_round(world, sid, clip)
    # The model: equally weighted FedAvg of the clipped updates, plus the seeded draw of
    # N(0, (z*C/m)^2) tensor by tensor in name order.
    model = await global_model(world, sid)
    clipped = fedavg([(p.weights, 1) for p in parties])
    sigma = z * clip / m
    draw = np.random.default_rng(31)
    noise = {n: draw.normal(0.0, sigma, np.shape(a)) for n, a in sorted(start.items())}
    for name, want in clipped.items():
        got = np.asarray(model[name], np.float64)
        assert np.max(np.abs(got - (want + noise[name]))) < tolerance(), name
    # ... whose empirical sd is sigma (1,210 values: within 10 % is about 5 standard errors).
    residual = np.concatenate([(model[n] - clipped[n]).ravel() for n in sorted(clipped)])
    assert np.std(residual) == pytest.approx(sigma, rel=0.1)
    assert abs(np.mean(residual)) < 5 * sigma / np.sqrt(residual.size)
    # Epsilon and the DP figures are in the round's metrics, as for plain central DP.
    [figures] = await metrics(world, sid)
    assert figures["epsilon"] == pytest.approx(one) and figures["dp_mode"] == "central"
    assert figures["dp_noise_std"] == pytest.approx(sigma)
    assert (figures["dp_clip_norm"], figures["dp_num_updates"]) == (clip, m)
    # Round 2 would pass max_epsilon: the session stops with round 1's model.
    session = await world.session(sid)
    assert session["status"] == "failed" and session["global_model"]["round"] == 1
    assert session["failure_reason"].startswith("budget_exhausted")
    assert session["privacy"]["epsilon"] == pytest.approx(one)
    # The noise went on before anything was stored: no model file in the store is the clean
    # clipped mean (as a model or as a delta).
    clean_delta = {n: clipped[n] - np.asarray(a, np.float64) for n, a in start.items()}
    for blob in await store_objects(world, (await store.pins()) - before):
        try:
            tensors = decode(blob)
        except TensorError:  # a data split
            continue
        for clean in (clipped, clean_delta):
            if tensors.keys() == clean.keys():
                assert max(float(np.max(np.abs(tensors[n] - clean[n]))) for n in clean) > 0.1


async def test_without_noise_a_secure_sum_under_central_dp_is_the_clipped_mean(world: World):
    clip = 0.5
    await world.add_runners(3)
    s = await world.started(total_rounds=1, config={"privacy_config": central(0.0, clip)})
    sid = s["id"]
    parties, _ = await private_round(world, sid, clip)
    model = await global_model(world, sid)
    for name, want in fedavg([(p.weights, 1) for p in parties]).items():
        assert np.max(np.abs(np.asarray(model[name], np.float64) - want)) < tolerance(), name
    [figures] = await metrics(world, sid)
    assert figures["dp_noise_std"] == 0.0 and figures.get("epsilon") is None  # unbounded
    assert (await world.session(sid))["status"] == "completed"


@pytest.mark.parametrize(
    ("dp", "expected"),
    [
        (
            {
                "l2_norm_clip": None,
                "adaptive_clipping": {"initial": 0.1, "target_quantile": 0.5, "learning_rate": 0.2},
            },
            "config.privacy_config.differential_privacy.adaptive_clipping",
        ),
        ({"sampling_rate": 0.5}, "config.privacy_config.differential_privacy.sampling_rate"),
    ],
)
async def test_what_a_secure_sum_cannot_do_under_central_dp_is_incompatible(
    world: World, dp: dict[str, Any], expected: str
):
    config = central(1.0, 1.0)
    config["differential_privacy"].update(dp)
    body = world.body(config={"privacy_config": config})
    r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
    assert error(r) == (422, "incompatible_options", expected), r.text
    assert "secure aggregation" in r.json()["error"]["message"]


async def test_central_dp_with_a_fixed_clip_and_secure_aggregation_is_accepted(world: World):
    body = world.body(config={"privacy_config": central(1.0, 0.5)})
    r = await world.client.post(f"{FL}/sessions", json=body, headers=world.auth)
    assert r.status_code == 201, r.text
    stored = r.json()["config"]["privacy_config"]
    assert stored["secure_aggregation"]["mode"] == "secagg_plus"
    assert stored["differential_privacy"]["mode"] == "central"
    assert stored["differential_privacy"]["l2_norm_clip"] == 0.5
