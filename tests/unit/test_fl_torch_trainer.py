"""``parity-runner --fl-trainer torch``: the same local training as the numpy trainer, on
PyTorch. For the same global model, data, config and seed both give the same weights within
float32 rounding (FedAvg and FedProx steps, an MLP of two hidden layers and a logistic
regression), the same loss and accuracy, the tensor names of PyTorch's ``nn.Linear``, the same
refusals, and the stop check before each batch. Skipped, saying why, without PyTorch (`make
test` installs it when its CPU wheel is at hand)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits

from parity.agent.fl import torch_trainer
from parity.agent.fl.executor import trainer_named
from parity.core.fl.errors import ModelError
from parity.core.fl.model import init_weights, parse_model_spec
from parity.core.fl.train import TrainConfig, TrainingStopped, train_local

torch = pytest.importorskip("torch", reason="PyTorch is not installed: its trainer is not tested")

DIGITS = load_digits()
X = (DIGITS.data[:300] / 16.0).astype(np.float32)
Y = DIGITS.target[:300]

MLP = parse_model_spec(
    "neural_network", {"input_size": 64, "hidden_sizes": [32, 16], "output_size": 10}
)
LOGISTIC = parse_model_spec("logistic_regression", {"input_size": 64, "output_size": 10})


@pytest.mark.parametrize("spec", [MLP, LOGISTIC], ids=["mlp", "logistic"])
@pytest.mark.parametrize("mu", [0.0, 0.5], ids=["fedavg", "fedprox"])
def test_the_same_steps_give_the_same_weights_as_the_numpy_trainer(spec, mu) -> None:  # type: ignore[no-untyped-def]
    start = init_weights(spec, 7)
    config = TrainConfig(learning_rate=0.1, batch_size=16, local_epochs=3, mu=mu)
    reference = train_local(spec, start, X, Y, config, seed=11)
    result = torch_trainer.train_local_torch(spec, start, X, Y, config, seed=11)
    assert result.steps == reference.steps == 3 * -(-300 // 16)
    assert result.num_examples == 300
    assert set(result.weights) == set(reference.weights) == set(spec.shapes())
    moved = 0.0
    for name, value in reference.weights.items():
        assert result.weights[name].dtype == np.float32
        assert result.weights[name].shape == value.shape
        np.testing.assert_allclose(result.weights[name], value, rtol=1e-4, atol=1e-5)
        moved = max(moved, float(np.abs(value - start[name]).max()))
    assert moved > 0.01  # it trained
    assert result.loss == pytest.approx(reference.loss, rel=1e-4)
    assert result.accuracy == pytest.approx(reference.accuracy, abs=1 / 300)
    for name, value in start.items():  # the global model is not modified
        np.testing.assert_array_equal(value, init_weights(spec, 7)[name])


def test_its_tensor_names_are_those_of_pytorchs_linear_layers() -> None:
    module = torch_trainer._module(MLP)
    assert [(n, tuple(t.shape)) for n, t in module.state_dict().items()] == [
        ("fc1.weight", (32, 64)),
        ("fc1.bias", (32,)),
        ("fc2.weight", (16, 32)),
        ("fc2.bias", (16,)),
        ("fc3.weight", (10, 16)),
        ("fc3.bias", (10,)),
    ]
    assert [(n, s) for n, s in MLP.shapes().items()] == [
        (n, tuple(t.shape)) for n, t in module.state_dict().items()
    ]


def test_it_refuses_what_the_numpy_trainer_refuses_and_stops_when_asked() -> None:
    start = init_weights(MLP, 1)
    config = TrainConfig(learning_rate=0.1, batch_size=16, local_epochs=2)
    wrong = {**start, "fc1.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(ModelError) as caught:
        torch_trainer.train_local_torch(MLP, wrong, X, Y, config, seed=1)
    assert caught.value.field.startswith("fc1.weight") or "fc1.weight" in str(caught.value)
    with pytest.raises(ModelError, match=r"labels must lie in 0\.\.9"):
        torch_trainer.train_local_torch(MLP, start, X, Y + 10, config, seed=1)
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(TrainingStopped, match="after 3 steps"):
        torch_trainer.train_local_torch(MLP, start, X, Y, config, seed=1, stop=stop)


def test_the_runner_option_names_the_trainers() -> None:
    assert trainer_named("torch") is torch_trainer.train_local_torch
    assert trainer_named("numpy") is train_local
    with pytest.raises(ValueError, match="numpy, torch, noop"):
        trainer_named("jax")


def test_rows_in_reverse_or_read_only_train_as_the_numpy_trainer_does() -> None:
    """torch.from_numpy refuses negative strides (``x[::-1]``) and warns on a read-only
    array: the numpy trainer takes both."""
    start = init_weights(MLP, 3)
    config = TrainConfig(learning_rate=0.1, batch_size=16, local_epochs=1)
    frozen = X.copy()
    frozen.flags.writeable = False
    for x, y in ((X[::-1], Y[::-1]), (frozen, Y)):
        reference = train_local(MLP, start, x, y, config, seed=4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = torch_trainer.train_local_torch(MLP, start, x, y, config, seed=4)
        for name, value in reference.weights.items():
            np.testing.assert_allclose(result.weights[name], value, rtol=1e-4, atol=1e-5)
    assert not frozen.flags.writeable  # the caller's rows are left as they were


def test_a_training_leaves_torchs_random_generator_alone() -> None:
    """The layers are not initialized (the global model is loaded into them): an
    initialization drew from torch's process-wide generator, shared with anything else in
    the process that seeds it."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    torch_trainer.train_local_torch(
        MLP, init_weights(MLP, 1), X, Y, TrainConfig(0.1, 32, 1), seed=2
    )
    assert torch.equal(torch.get_rng_state(), before)
