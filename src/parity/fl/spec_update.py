"""The model-update request a runner posts after training: strict validation into a
:class:`ModelUpdate`.

Checked here: the ids, the claim token, exactly one of ``weights`` (the README's JSON form:
tensor name -> nested list of numbers) and ``update_cid`` (a safetensors file already in the
content store), and the reported figures. The tensors themselves (names, shapes, finite values,
norm) are checked later against the round's global model with
:func:`parity.core.fl.tensors.from_lists` / :func:`~parity.core.fl.tensors.validate_update`,
which name the tensor at fault. ``runner_id``, ``gradients``, ``update_type``, ``metadata`` and
``privacy_metrics`` are accepted and ignored: the caller's identity is its runner token.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parity.errors import InvalidInput
from parity.fl.spec_fields import (
    check_finite_tree,
    read_float,
    read_int,
    read_mapping,
    read_str,
    refuse_unknown,
    required,
)

__all__ = ["MAX_EXAMPLES", "Figures", "ModelUpdate", "parse_figures", "parse_model_update"]

# Examples and milliseconds are stored as 32-bit integers. What a report counts for is bounded
# again where it is accepted (parity.fl.examples): by the partition's rows when the server
# partitioned the data, else by the participant's first report and the session's cap.
MAX_EXAMPLES = 2**31 - 1
MAX_TRAINING_TIME_MS = 2**31 - 1  # 24.8 days
MAX_TOKEN = 512
MAX_CID_TEXT = 512
MAX_TENSORS = 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UPDATE_KEYS = frozenset(
    {
        "session_id",
        "round_id",
        "claim_token",
        "task_id",
        "weights",
        "update_cid",
        "update_sha256",
        "data_size",
        "loss",
        "accuracy",
        "training_time_ms",
        # Accepted and ignored (the original API's fields).
        "runner_id",
        "gradients",
        "update_type",
        "metadata",
        "privacy_metrics",
    }
)
# Checked tensor by tensor later (weights) or not used at all (gradients): not walked here.
_NOT_WALKED = frozenset({"weights", "gradients"})
# The fields read as text, and what a NaN there is refused as.
_TEXT_FIELDS = {
    "session_id": "a UUID string",
    "round_id": "a UUID string",
    "task_id": "a UUID string",
    "claim_token": "a string",
    "update_cid": "a string",
    "update_sha256": "a string",
}


@dataclass(frozen=True)
class Figures:
    """What a participant reports of its training, beside its update (or masked input)."""

    data_size: int
    loss: float
    accuracy: float
    training_time_ms: int


def parse_figures(body: Mapping[str, Any]) -> Figures:
    """``data_size`` (examples, 1 to 2^31 - 1), ``loss`` (a training loss: 0 or more),
    ``accuracy`` (0 to 1) and ``training_time_ms`` (0 to 2^31 - 1), each required; a 422
    names the first at fault."""
    return Figures(
        data_size=read_int(
            required(body, "data_size", "data_size"),
            "data_size",
            minimum=1,
            maximum=MAX_EXAMPLES,
        ),
        loss=read_float(required(body, "loss", "loss"), "loss", minimum=0.0),
        accuracy=read_float(
            required(body, "accuracy", "accuracy"), "accuracy", minimum=0.0, maximum=1.0
        ),
        training_time_ms=read_int(
            required(body, "training_time_ms", "training_time_ms"),
            "training_time_ms",
            minimum=0,
            maximum=MAX_TRAINING_TIME_MS,
        ),
    )


@dataclass(frozen=True)
class ModelUpdate:
    """A validated model-update body. Exactly one of ``weights`` and ``update_cid`` is set."""

    session_id: uuid.UUID
    round_id: uuid.UUID
    claim_token: str
    data_size: int
    loss: float
    accuracy: float
    training_time_ms: int
    weights: Mapping[str, Any] | None = None
    update_cid: str | None = None
    update_sha256: str | None = None
    task_id: uuid.UUID | None = None


def parse_model_update(body: Mapping[str, Any]) -> ModelUpdate:
    """Validate a model-update body; a :class:`InvalidInput` names the first field at fault."""
    body = read_mapping(body, "body")
    refuse_unknown(body, _UPDATE_KEYS, "")
    check_finite_tree(body, skip=_NOT_WALKED, expected=_TEXT_FIELDS)
    session_id = _uuid(required(body, "session_id", "session_id"), "session_id")
    round_id = _uuid(required(body, "round_id", "round_id"), "round_id")
    claim_token = read_str(
        required(body, "claim_token", "claim_token"), "claim_token", max_length=MAX_TOKEN
    )
    weights, cid = body.get("weights"), body.get("update_cid")
    if (weights is None) == (cid is None):
        raise InvalidInput("weights", "give exactly one of weights or update_cid")
    # Checked in the order of the body's fields: the first at fault is the one named.
    task_id = None if body.get("task_id") is None else _uuid(body["task_id"], "task_id")
    tensors = None if weights is None else _weights(weights)
    update_cid = None if cid is None else read_str(cid, "update_cid", max_length=MAX_CID_TEXT)
    update_sha256 = _sha256(body.get("update_sha256"), cid is not None)
    figures = parse_figures(body)
    return ModelUpdate(
        session_id=session_id,
        round_id=round_id,
        claim_token=claim_token,
        task_id=task_id,
        weights=tensors,
        update_cid=update_cid,
        update_sha256=update_sha256,
        data_size=figures.data_size,
        loss=figures.loss,
        accuracy=figures.accuracy,
        training_time_ms=figures.training_time_ms,
    )


def _uuid(value: Any, path: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise InvalidInput(path, f"{path} must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput(path, f"{path} is not a UUID: {value[:64]!r}") from None


def _weights(value: Any) -> Mapping[str, Any]:
    weights = read_mapping(value, "weights")
    if not weights:
        raise InvalidInput("weights", "weights must name at least one tensor")
    if len(weights) > MAX_TENSORS:
        raise InvalidInput("weights", f"weights has more than {MAX_TENSORS} tensors")
    for name, values in weights.items():
        if not isinstance(values, list):
            raise InvalidInput(f"weights.{name}", f"tensor {name!r} must be a list of numbers")
    return weights


def _sha256(value: Any, with_cid: bool) -> str | None:
    if value is None:
        return None
    if not with_cid:
        raise InvalidInput("update_sha256", "update_sha256 goes with update_cid")
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise InvalidInput("update_sha256", "update_sha256 must be 64 hexadecimal characters")
    return value.lower()
