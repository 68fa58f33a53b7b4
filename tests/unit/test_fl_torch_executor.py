"""The ``fl_train`` executor with ``--fl-trainer torch`` against the scripted servers of the
executor's tests: a plain round, a FedProx ``mu`` from the task config, local DP, a SecAgg+
round with central DP's clip and a partition smaller than one batch post what the numpy
trainer's update would be (within float32 rounding); a cancel stops the PyTorch training at
its next batch; trainings that run at once (a runner with several slots) give what each gives
alone and leave no module or tensor behind. Skipped, saying why, without PyTorch."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from parity.agent.executors import CancelToken, Outcome
from parity.agent.fl import FlExecutor, torch_trainer
from parity.core.fl.dp import clip_update, model_delta
from parity.core.fl.model import init_weights, parse_model_spec
from parity.core.fl.quantize import dequantize_sum, flatten, quantization_step
from parity.core.fl.train import TrainConfig, TrainingStopped, train_local
from tests.conftest import until
from tests.unit.test_agent_fl import (
    GLOBAL,
    TOKEN,
    Server,
    X,
    Y,
    client_for,
    expected,
    fl_config,
    fl_task,
    npz,
    posted_weights,
    sha,
)
from tests.unit.test_agent_fl_secagg import CONFIG, LAYOUT, SecAggServer, secure_config

torch = pytest.importorskip("torch", reason="PyTorch is not installed: its trainer is not tested")


async def execute(
    server: Server, config: dict[str, Any], cancel: CancelToken | None = None
) -> Outcome:
    client = client_for(server)
    executor = FlExecutor(client, trainer="torch")
    executor.claim_token_of = lambda task_id: TOKEN

    async def logs(lines: list[str]) -> None:
        return None

    try:
        return await executor.run(fl_task(config), logs, cancel or CancelToken())
    finally:
        await client.close()


def assert_close(got: dict[str, NDArray[Any]], want: dict[str, NDArray[Any]]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("mu", [0.0, 0.7], ids=["fedavg", "fedprox"])
async def test_a_round_posts_the_numpy_trainers_update_within_rounding(mu: float) -> None:
    server = Server()
    train = {"learning_rate": 0.1, "batch_size": 8, "local_epochs": 2, "mu": mu}
    outcome = await execute(server, fl_config(train_config=train))
    assert outcome.ok and outcome.reported, outcome.error
    [update] = server.updates
    assert update["data_size"] == len(Y)
    want = expected(X, Y, mu=mu)
    assert_close(posted_weights(update), want)
    if mu:  # the proximal term took part: the update differs from plain FedAvg's
        plain = expected(X, Y, mu=0.0)
        assert max(float(np.abs(plain[n] - want[n]).max()) for n in want) > 1e-3


async def test_a_partition_smaller_than_one_batch_is_one_step_per_epoch() -> None:
    x, y = X[:5], Y[:5]
    part = npz(x, y)
    server = Server()
    server.store["bafysmall"] = part
    data = {"kind": "partition", "cid": "bafysmall", "sha256": sha(part), "format": "npz",
            "rows": 5}  # fmt: skip
    train = {"learning_rate": 0.1, "batch_size": 64, "local_epochs": 3, "mu": 0.0}
    outcome = await execute(server, fl_config(data=data, train_config=train))
    assert outcome.ok, outcome.error
    assert server.updates[0]["data_size"] == 5
    assert_close(posted_weights(server.updates[0]), expected(x, y, batch_size=64, local_epochs=3))


async def test_local_dp_clips_the_torch_trained_delta() -> None:
    clip = 0.05
    server = Server()
    privacy = {"mode": "local", "noise_multiplier": 0.0, "l2_norm_clip": clip}
    outcome = await execute(server, fl_config(privacy=privacy))
    assert outcome.ok, outcome.error
    delta = model_delta(posted_weights(server.updates[0]), GLOBAL)
    want = clip_update(model_delta(expected(X, Y), GLOBAL), clip)
    assert want.clipped
    for name in GLOBAL:
        np.testing.assert_allclose(delta[name], want.delta[name], rtol=0, atol=1e-6)


async def test_a_secagg_round_with_central_clip_masks_the_torch_trained_delta() -> None:
    clip = 0.05
    server = SecAggServer()
    config = {**secure_config(), "privacy": {"mode": "central", "l2_norm_clip": clip}}
    outcome = await execute(server, config)
    assert outcome.ok and outcome.reported, outcome.error
    assert server.updates == [] and server.total is not None
    levels = server.total.astype(np.uint64)
    for peer in server.levels.values():
        levels = levels - peer.astype(np.uint64)
    levels &= np.uint64(CONFIG.modulus_range - 1)
    contributed = dequantize_sum(levels, 1, CONFIG.clipping_range, CONFIG.quantization_range)
    step = quantization_step(CONFIG.clipping_range, CONFIG.quantization_range)
    want = flatten(clip_update(model_delta(expected(X, Y), GLOBAL), clip).delta, LAYOUT)
    assert np.max(np.abs(contributed[:-1] - want)) < step + 1e-6


async def test_a_cancel_stops_the_torch_training_at_its_next_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long training (many epochs of batch 1) is asked to stop once it has run a while."""
    stopped: list[BaseException] = []
    running = threading.Event()
    real = torch_trainer.train_local_torch

    def watched(*args: Any) -> Any:
        *rest, stop = args

        def asked() -> bool:
            running.set()
            return bool(stop())

        try:
            return real(*rest, asked)
        except TrainingStopped as exc:
            stopped.append(exc)
            raise

    monkeypatch.setattr(torch_trainer, "train_local_torch", watched)
    cancel = CancelToken()
    train = {"learning_rate": 0.01, "batch_size": 1, "local_epochs": 1000, "mu": 0.0}
    run = asyncio.ensure_future(execute(Server(), fl_config(train_config=train), cancel))
    await until(running.is_set)
    cancel.cancel("cancelled by the client")
    outcome = await asyncio.wait_for(run, 30)
    assert outcome.cancelled and not outcome.ok
    await until(lambda: bool(stopped))
    assert "training stopped after" in str(stopped[0])


MLP = parse_model_spec(
    "neural_network", {"input_size": 4, "hidden_sizes": [16, 8], "output_size": 3}
)


def jobs() -> list[tuple[NDArray[np.float32], NDArray[np.int64], int]]:
    return [(X[i::3], Y[i::3], seed) for i, seed in enumerate([3, 5, 8])]


async def test_trainings_at_once_give_what_each_gives_alone() -> None:
    start = init_weights(MLP, 2)
    config = TrainConfig(learning_rate=0.1, batch_size=4, local_epochs=20)
    alone = [torch_trainer.train_local_torch(MLP, start, x, y, config, s) for x, y, s in jobs()]
    together = await asyncio.gather(
        *(
            asyncio.to_thread(torch_trainer.train_local_torch, MLP, start, x, y, config, s)
            for _ in range(2)
            for x, y, s in jobs()
        )
    )
    for got, want in zip(together, alone + alone, strict=True):
        assert got.steps == want.steps
        for name, value in want.weights.items():
            np.testing.assert_array_equal(got.weights[name], value)
    for (x, y, s), want in zip(jobs(), alone, strict=True):
        assert_close(want.weights, train_local(MLP, start, x, y, config, s).weights)


def live_torch_objects() -> tuple[int, int]:
    gc.collect()
    objects = gc.get_objects()
    modules = sum(1 for o in objects if type(o).__qualname__ == "_module.<locals>.Network")
    tensors = sum(1 for o in objects if type(o) in (torch.Tensor, torch.nn.Parameter))
    return modules, tensors


def test_nothing_of_a_training_stays_alive_after_it() -> None:
    """Many trainings, finished or stopped, in a worker thread as the runner runs them: no
    module and no tensor outlives its training."""
    start = init_weights(MLP, 2)
    config = TrainConfig(learning_rate=0.1, batch_size=8, local_epochs=1)

    def rounds() -> None:
        for i in range(100):
            torch_trainer.train_local_torch(MLP, start, X, Y, config, i)
            try:
                torch_trainer.train_local_torch(MLP, start, X, Y, config, i, stop=lambda: True)
            except TrainingStopped:
                pass
            else:
                raise AssertionError("not stopped")

    before = live_torch_objects()
    worker = threading.Thread(target=rounds)
    worker.start()
    worker.join()
    assert live_torch_objects() == before
