"""Local training with PyTorch (``parity-runner --fl-trainer torch``): the same models and the
same steps as the numpy trainer (:func:`parity.core.fl.train.train_local`), on torch tensors.

The model is a module whose layers are ``nn.Linear`` attributes ``fc1`` … ``fcN`` with a ReLU
between them, so its ``state_dict`` names are the tensor names of the session's safetensors
files (``fc1.weight`` [out x in], ``fc1.bias``, …): a global model loads into it as is and the
trained one is sent back under the same names. The rows are visited in the numpy trainer's
order (:func:`parity.core.fl.train.batches`, seeded), the loss is the mean softmax
cross-entropy of the batch, and each step is ``w <- w - lr * (grad + mu * (w - w_global))``
(FedProx's proximal term; ``mu = 0`` is FedAvg), so both trainers give the same weights within
float32 rounding. The loss and accuracy reported are computed as the numpy trainer does, on the
trained weights. PyTorch is optional: :func:`available` says whether it is installed,
:func:`import_problem` why an installed one cannot be imported."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from parity.core.fl.model import ModelSpec
from parity.core.fl.train import (
    TrainConfig,
    TrainingStopped,
    TrainResult,
    batches,
    check_inputs,
    finish,
)


def available() -> bool:
    """Whether PyTorch is installed (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def import_problem() -> str | None:
    """Why the installed PyTorch cannot be imported (``None`` when it can). Importing it when
    the runner starts finds a broken installation (a missing shared library, a numpy it was
    not built for) before any task is claimed, and keeps the import's seconds out of the first
    round's training."""
    try:
        import torch  # noqa: F401
    except Exception as exc:  # ImportError, OSError, RuntimeError: whatever the import raised
        return f"{type(exc).__name__}: {exc}"
    return None


def train_local_torch(
    spec: ModelSpec,
    global_weights: Mapping[str, NDArray[Any]],
    x: ArrayLike,
    y: ArrayLike,
    config: TrainConfig,
    seed: int,
    stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """:func:`parity.core.fl.train.train_local` on PyTorch: the same arguments, checks and
    result. Runs on the CPU in one thread (a runner's slots are its parallelism)."""
    import torch
    from torch.nn import functional

    features, labels = check_inputs(spec, global_weights, x, y)
    # torch.from_numpy takes no negative strides (x[::-1]) and warns on a read-only array: such
    # rows are copied, any others shared.
    features = np.require(features, requirements=("C_CONTIGUOUS", "WRITEABLE"))
    torch.set_num_threads(1)
    model = _module(spec)
    start = {name: torch.from_numpy(np.array(value, dtype=np.float32)) for name, value in
             global_weights.items()}  # fmt: skip
    model.load_state_dict(start)
    inputs, targets = torch.from_numpy(features), torch.from_numpy(labels)
    lr, mu = config.learning_rate, config.mu
    params = dict(model.named_parameters())
    steps = 0
    for batch in batches(features.shape[0], config, seed):
        if stop is not None and stop():
            raise TrainingStopped(f"training stopped after {steps} steps")
        index = torch.from_numpy(batch)
        model.zero_grad(set_to_none=True)
        loss = functional.cross_entropy(model(inputs[index]), targets[index])
        loss.backward()
        with torch.no_grad():
            for name, param in params.items():
                grad = param.grad
                assert grad is not None  # every parameter takes part in the loss
                if mu:
                    grad = grad + mu * (param - start[name])
                param.sub_(lr * grad)
        steps += 1
    weights = {
        name: tensor.detach().numpy().astype(np.float32, copy=True)
        for name, tensor in model.state_dict().items()
    }
    return finish(spec, weights, features, labels, steps)


def _module(spec: ModelSpec) -> Any:
    """The spec's network as a torch module with ``fc1`` … ``fcN`` linear layers."""
    import torch
    from torch import nn
    from torch.nn.utils import skip_init

    class Network(nn.Module):  # type: ignore[misc]  # torch is not type-checked here
        def __init__(self) -> None:
            super().__init__()
            self.count = spec.num_layers
            for i in range(spec.num_layers):
                fan_in, fan_out = spec.layer_sizes[i], spec.layer_sizes[i + 1]
                # Not initialized: the global model's weights are loaded next, and an
                # initialization would draw from torch's process-wide random generator.
                setattr(self, f"fc{i + 1}", skip_init(nn.Linear, fan_in, fan_out))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i in range(1, self.count + 1):
                x = getattr(self, f"fc{i}")(x)
                if i < self.count:
                    x = torch.relu(x)
            return x

    return Network()
