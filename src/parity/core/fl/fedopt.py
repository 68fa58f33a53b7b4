"""Adaptive server optimisers: FedAdagrad, FedAdam, FedYogi.

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2. With x_t the global
model and Delta_t the pseudo-gradient of round t (the participants' mean model minus x_t; the
mean is example-weighted, as FedAvg's and Flower's, which is the paper's plain mean when every
participant has as many examples):

    m_t = beta_1 * m_{t-1} + (1 - beta_1) * Delta_t                     (m_{-1} = 0)
    v_t = v_{t-1} + Delta_t^2                                            FedAdagrad
    v_t = beta_2 * v_{t-1} + (1 - beta_2) * Delta_t^2                    FedAdam
    v_t = v_{t-1} - (1 - beta_2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)  FedYogi
    x_{t+1} = x_t + eta * m_t / (sqrt(v_t) + tau)

``v_{-1} = tau^2``, the paper's lower bound (``v_{-1} >= tau^2``); there is no bias correction,
as in the paper. ``eta`` is the server learning rate; the client learning rate (the paper's
eta_l) is the session's ``learning_rate``, used by the runners. FedAdagrad uses ``beta_1`` too
(0 gives the plain Adagrad step) and ignores ``beta_2``.

The moments carry over between rounds in a :class:`ServerOptState`, which round-trips through
bytes (safetensors) so the server can store it beside the global model and resume after a
restart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load, save

from parity.core.fl.aggregation import TensorMap, Weights, check_same_layout
from parity.core.fl.errors import AggregationError

__all__ = ["FEDOPT_METHODS", "ServerOptState", "server_opt_step"]

FEDOPT_METHODS = ("fedadagrad", "fedadam", "fedyogi")


@dataclass
class ServerOptState:
    """The server optimiser's memory: ``steps`` taken so far and the moments per tensor."""

    method: str
    steps: int = 0
    m: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    v: dict[str, NDArray[np.float64]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """safetensors bytes: tensors ``m/<name>`` and ``v/<name>``, method and steps in the
        header metadata."""
        tensors = {f"m/{n}": a for n, a in self.m.items()} | {
            f"v/{n}": a for n, a in self.v.items()
        }
        meta = {"method": self.method, "steps": str(self.steps)}
        return bytes(save(tensors, metadata={"parity.fedopt": json.dumps(meta)}))

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerOptState:
        try:
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
            meta = json.loads(header["__metadata__"]["parity.fedopt"])
            tensors = load(data)
        except Exception as exc:  # malformed bytes of any kind: one clear error
            raise AggregationError("state", f"unreadable server optimiser state: {exc}") from exc
        state = cls(method=str(meta["method"]), steps=int(meta["steps"]))
        for key, array in tensors.items():
            kind, _, name = key.partition("/")
            (state.m if kind == "m" else state.v)[name] = array.astype(np.float64)
        return state


def server_opt_step(
    method: str,
    global_weights: TensorMap,
    mean_weights: TensorMap,
    state: ServerOptState | None,
    params: Mapping[str, Any],
) -> tuple[Weights, ServerOptState]:
    """One round of FedAdagrad / FedAdam / FedYogi: the next global model and the new state.

    ``mean_weights`` is the participants' example-weighted mean model (FedAvg's result, e.g.
    from a :class:`~parity.core.fl.aggregation.WeightedSum`); ``params`` holds ``eta``,
    ``beta_1``, ``beta_2`` (unused by FedAdagrad) and ``tau``. ``state`` is None in the first
    round. The inputs are not modified."""
    if method not in FEDOPT_METHODS:
        raise AggregationError("aggregation_method", f"{method!r} is not a server optimiser")
    check_same_layout(global_weights, mean_weights, "the mean model")
    eta, tau = float(params["eta"]), float(params["tau"])
    beta_1 = float(params["beta_1"])
    beta_2 = float(params.get("beta_2", 0.0))
    if state is None:
        state = ServerOptState(method=method)
    elif state.method != method:
        raise AggregationError(
            "state", f"the stored optimiser state is {state.method}'s, not {method}'s"
        )
    new_state = ServerOptState(method=method, steps=state.steps + 1)
    result: Weights = {}
    for name, current in global_weights.items():
        x = np.asarray(current, dtype=np.float64)
        delta = np.asarray(mean_weights[name], dtype=np.float64) - x
        m_prev = state.m.get(name, np.zeros_like(x))
        v_prev = state.v.get(name, np.full_like(x, tau * tau))
        if m_prev.shape != x.shape or v_prev.shape != x.shape:
            raise AggregationError(name, f"the optimiser state's tensor {name!r} has another shape")
        m = beta_1 * m_prev + (1.0 - beta_1) * delta
        squared = delta * delta
        if method == "fedadagrad":
            v = v_prev + squared
        elif method == "fedadam":
            v = beta_2 * v_prev + (1.0 - beta_2) * squared
        else:
            v = v_prev - (1.0 - beta_2) * squared * np.sign(v_prev - squared)
        new_state.m[name], new_state.v[name] = m, v
        result[name] = (x + eta * m / (np.sqrt(v) + tau)).astype(np.float32)
    return result, new_state
