"""Local differential privacy in the runner's ``fl_train`` executor, against a scripted server:
with ``privacy: {"mode": "local", ...}`` the posted model is the global model plus the trained
delta clipped to ``l2_norm_clip`` plus Gaussian noise of sd ``noise_multiplier * l2_norm_clip``
drawn from the OS (not from the task's seed, which the server chose); a malformed local setting
fails the task naming its field, and any other privacy setting is still refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from parity.agent.fl import local_dp
from parity.core.fl.dp import clip_update, joint_l2_norm, model_delta
from tests.unit.test_agent_fl import (
    GLOBAL,
    Server,
    X,
    Y,
    execute,
    expected,
    fl_config,
    posted_weights,
)


def local(z: float, clip: float, **extra: Any) -> dict[str, Any]:
    return {"mode": "local", "noise_multiplier": z, "l2_norm_clip": clip, **extra}


async def test_without_noise_the_posted_delta_is_the_trained_one_clipped_to_the_norm() -> None:
    clip = 0.05
    clean = expected(X, Y)
    assert joint_l2_norm(model_delta(clean, GLOBAL)) > 4 * clip  # so clipping does something
    server = Server()
    outcome = await execute(server, fl_config(privacy=local(0.0, clip)))
    assert outcome.ok, outcome.error
    posted = posted_weights(server.updates[0])
    delta = model_delta(posted, GLOBAL)
    assert joint_l2_norm(delta) <= clip * (1 + 1e-5)
    # the trained direction is kept: the same delta, scaled down to the clip
    want = clip_update(model_delta(clean, GLOBAL), clip).delta
    for name in GLOBAL:
        np.testing.assert_allclose(delta[name], want[name], rtol=0, atol=1e-6)


async def test_the_posted_update_is_the_clipped_delta_plus_noise_of_sd_z_times_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    z, clip = 0.8, 0.05
    monkeypatch.setattr(local_dp, "noise_rng", lambda: np.random.default_rng(7))
    server = Server()
    outcome = await execute(server, fl_config(privacy=local(z, clip)))
    assert outcome.ok, outcome.error
    posted = posted_weights(server.updates[0])
    clean = expected(X, Y)
    clipped = clip_update(model_delta(clean, GLOBAL), clip).delta
    noise = np.random.default_rng(7)
    residual = []
    for name, base in sorted(GLOBAL.items()):  # drawn tensor by tensor in name order
        want = base.astype(np.float64) + clipped[name] + noise.normal(0, z * clip, base.shape)
        np.testing.assert_allclose(posted[name], want.astype(np.float32), rtol=0, atol=1e-6)
        residual.append((posted[name] - base - clipped[name]).ravel())
        assert not np.allclose(posted[name], clean[name], atol=1e-4)  # never the clean update
    # the noise is what makes the posted delta larger than the clip
    assert joint_l2_norm(model_delta(posted, GLOBAL)) > clip
    assert np.std(np.concatenate(residual)) == pytest.approx(z * clip, rel=0.3)


async def test_the_noise_comes_from_the_os_not_from_the_task_seed() -> None:
    posted = []
    for _ in range(2):
        server = Server()
        outcome = await execute(server, fl_config(privacy=local(1.0, 0.05)))
        assert outcome.ok, outcome.error
        posted.append(posted_weights(server.updates[0]))
    # the same task (same seed, same data) twice: the same training, different noise
    assert all(not np.array_equal(posted[0][n], posted[1][n]) for n in GLOBAL)


@pytest.mark.parametrize(
    ("privacy", "named"),
    [
        ({"mode": "local", "noise_multiplier": 1.0}, "privacy.l2_norm_clip"),
        ({"mode": "local", "l2_norm_clip": 1.0}, "privacy.noise_multiplier"),
        (local(-1.0, 1.0), "privacy.noise_multiplier"),
        (local(1.0, 0.0), "privacy.l2_norm_clip"),
        (local(1.0, 1.0, epsilon=3), "privacy.epsilon"),
        ({"mode": "central", "noise_multiplier": 1.0}, "privacy"),
        ({"secure_aggregation": True}, "privacy"),
    ],
)
async def test_a_privacy_setting_the_runner_cannot_apply_fails_the_task_naming_it(
    privacy: dict[str, Any], named: str
) -> None:
    server = Server()
    server.store.clear()
    outcome = await execute(server, fl_config(privacy=privacy))
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.startswith(f"invalid fl_train config: {named}"), outcome.error
    assert server.updates == [] and server.downloads == []
