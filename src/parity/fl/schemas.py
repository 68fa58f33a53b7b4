"""Pydantic models of the federated-learning API, for its OpenAPI description.

Request bodies are validated by :func:`parity.fl.spec.parse_session_create` and
:func:`parity.fl.spec.parse_model_update` (strict, 422 naming the field), not by these models:
:class:`SessionCreate` and :class:`ModelUpdateCreate` are loose (every field optional, extra
keys allowed) and only describe the body; a route reads the raw JSON and passes
:func:`request_body` of the model as ``openapi_extra``. The response models are plain shapes the
routes fill.

The nested ``config`` object has a field called ``model_config``, the name pydantic reserves for
a model's settings, so :class:`SessionConfigIn` holds it as ``model_settings`` with the alias
``model_config`` (the schema shows the alias).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MODEL_UPDATE_EXAMPLE",
    "SESSION_EXAMPLE",
    "GlobalModelRef",
    "MetricsRead",
    "ModelConfigIn",
    "ModelRead",
    "ModelUpdateCreate",
    "RoundList",
    "RoundMetrics",
    "RoundRead",
    "SessionConfigIn",
    "SessionCreate",
    "SessionList",
    "SessionRead",
    "SessionStarted",
    "TrainingDataIn",
    "UpdateAccepted",
    "request_body",
]

# The README's request, as written (creator_address is accepted and ignored).
SESSION_EXAMPLE: dict[str, Any] = {
    "name": "MNIST Classification",
    "description": "Distributed digit classification",
    "model_type": "neural_network",
    "total_rounds": 10,
    "min_participants": 3,
    "creator_address": "0x123...",
    "training_data": {
        "dataset_cid": "QmYourDatasetCID",
        "data_format": "csv",
        "split_strategy": "non_iid",
        "metadata": {"alpha": 0.5, "min_samples": 100, "overlap_ratio": 0.0},
    },
    "config": {
        "aggregation_method": "federated_averaging",
        "learning_rate": 0.001,
        "batch_size": 32,
        "local_epochs": 5,
        "model_config": {"input_size": 784, "hidden_size": 128, "output_size": 10},
    },
}

MODEL_UPDATE_EXAMPLE: dict[str, Any] = {
    "session_id": "6f1c1f0e-8d1e-4a57-9a7e-4f3f2b1f0c11",
    "round_id": "0b7e3c55-5a0c-4b4e-8f67-2d9a8c1e7f20",
    "claim_token": "the claim token of the fl_train task",
    "weights": {"fc1.weight": [[0.01, -0.02]], "fc1.bias": [0.0]},
    "data_size": 143,
    "loss": 0.12,
    "accuracy": 0.97,
    "training_time_ms": 85,
}

_LOOSE = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())
_READ = ConfigDict(extra="allow", protected_namespaces=())


class ModelConfigIn(BaseModel):
    model_config = _LOOSE
    input_size: int | None = Field(None, description="Features per example")
    hidden_size: int | None = Field(None, description="One hidden layer's width (neural_network)")
    hidden_sizes: list[int] | None = Field(
        None, description="Hidden layer widths (neural_network; instead of hidden_size)"
    )
    output_size: int | None = Field(None, description="Number of classes (at least 2)")


class TrainingDataIn(BaseModel):
    model_config = _LOOSE
    dataset_cid: str | None = Field(
        None, description="CID of the data file in the content store (or give runner_dataset)"
    )
    runner_dataset: str | None = Field(
        None, description="Name of a data set the runners hold locally (instead of dataset_cid)"
    )
    data_format: Literal["csv", "npz", "json"] | None = Field(
        None, description="Required with dataset_cid: csv (label last), npz (X, y), json"
    )
    split_strategy: str | None = Field(
        None,
        description="random|iid, sequential, stratified, non_iid|dirichlet, label_skew, shard, "
        "size (required)",
    )
    metadata: dict[str, Any] | None = Field(
        None,
        description="Strategy options: alpha, min_samples, overlap_ratio, "
        "classes_per_participant, shards_per_participant, partition_sizes, ... (one the "
        "strategy does not take is refused)",
    )
    seed: int | None = Field(None, description="Partitioning seed (drawn and stored if absent)")
    test_split: float | None = Field(
        None, description="Share of rows held out to evaluate the global model (0 to 0.5)"
    )
    max_samples_per_participant: int | None = Field(
        None,
        description="With runner_dataset only: the most examples one participant's update "
        "counts for (its FedAvg weight and reward share; the counts are the runners' own word)",
    )
    dataset_size: int | None = Field(None, description="Informational")
    features: list[Any] | None = Field(None, description="Informational")
    labels: list[Any] | None = Field(None, description="Informational")


class SessionConfigIn(BaseModel):
    model_config = _LOOSE
    aggregation_method: str | None = Field(
        None,
        description="federated_averaging|fedavg, fedprox, fedadam, fedyogi, fedadagrad, "
        "fedmedian, trimmed_mean, krum, multi_krum (required)",
    )
    aggregation_params: dict[str, Any] | None = Field(
        None,
        description="Method parameters: mu, eta, beta_1, beta_2, tau, beta, num_malicious, "
        "num_selected (one the method does not take is refused)",
    )
    learning_rate: float | None = Field(None, description="Local SGD learning rate (required)")
    batch_size: int | None = Field(None, description="Local batch size (required)")
    local_epochs: int | None = Field(None, description="Local epochs per round (required)")
    model_settings: ModelConfigIn | None = Field(
        None, alias="model_config", description="Model layer sizes (required)"
    )
    min_share: float | None = Field(
        None, description="Share of participants a round needs at its deadline (0 < x <= 1)"
    )
    round_timeout_seconds: int | None = Field(None, description="A round's deadline")
    max_update_norm: float | None = Field(None, description="Bound on an update's L2 change")
    client_selection: Literal["random"] | None = Field(None, description="Accepted")
    privacy_config: dict[str, Any] | None = Field(
        None,
        description="differential_privacy {mode central|local, noise_multiplier, l2_norm_clip "
        "| adaptive_clipping, delta, max_epsilon?, sampling_rate?} and/or secure_aggregation "
        "{mode secagg_plus, ...}; the original's flat flags are mapped (see the README)",
    )


class SessionCreate(BaseModel):
    """``POST /federated-learning/sessions``: the README's body."""

    model_config = ConfigDict(
        extra="allow", protected_namespaces=(), json_schema_extra={"example": SESSION_EXAMPLE}
    )
    name: str | None = Field(None, description="Session name (required)")
    description: str | None = None
    model_type: Literal["neural_network", "logistic_regression"] | None = Field(
        None, description="Required"
    )
    total_rounds: int | None = Field(None, description="1 to 10000 (required)")
    min_participants: int | None = Field(None, description="At least 1 (required)")
    max_participants: int | None = Field(None, description="At least min_participants")
    creator_address: str | None = Field(None, description="Accepted and ignored")
    reward_pool: str | None = Field(None, description="Token base units (decimal string)")
    training_data: TrainingDataIn | None = None
    config: SessionConfigIn | None = None


class ModelUpdateCreate(BaseModel):
    """``POST /federated-learning/model-updates`` (runner token): exactly one of ``weights``
    and ``update_cid``."""

    model_config = ConfigDict(
        extra="allow", protected_namespaces=(), json_schema_extra={"example": MODEL_UPDATE_EXAMPLE}
    )
    session_id: uuid.UUID | None = None
    round_id: uuid.UUID | None = None
    claim_token: str | None = Field(None, description="The fl_train task's claim token")
    task_id: uuid.UUID | None = None
    weights: dict[str, list[Any]] | None = Field(
        None, description="Tensor name -> flat or nested list of numbers"
    )
    update_cid: str | None = Field(None, description="A safetensors file in the content store")
    update_sha256: str | None = None
    data_size: int | None = Field(None, description="Examples trained on (at least 1)")
    loss: float | None = None
    accuracy: float | None = Field(None, description="0 to 1")
    training_time_ms: int | None = Field(None, description="The runner's own training time")


# -- responses


class GlobalModelRef(BaseModel):
    round: int
    cid: str
    sha256: str


class SessionRead(BaseModel):
    model_config = _READ
    id: uuid.UUID
    name: str
    description: str
    model_type: str
    status: Literal["pending", "active", "completed", "failed", "cancelled"]
    failure_reason: str | None = None
    current_round: int
    total_rounds: int
    min_participants: int
    max_participants: int
    participant_count: int
    config: dict[str, Any]
    training_data: dict[str, Any]
    seed: int | None = None
    reward_pool: str | None = Field(None, description="Token base units (decimal string)")
    creator_address: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = Field(
        None,
        description="When the session ended, whichever way: completed, failed or cancelled "
        "(status says which); null while pending or active",
    )
    global_model: GlobalModelRef | None = None


class SessionList(BaseModel):
    sessions: list[SessionRead]
    count: int = Field(description="Sessions on this page (not the total)")
    next_cursor: str | None = None
    limit: int


class SessionStarted(BaseModel):
    message: str
    session: SessionRead


class RoundRead(BaseModel):
    model_config = _READ
    id: uuid.UUID
    session_id: uuid.UUID
    number: int
    status: Literal["collecting", "unmasking", "aggregating", "completed", "failed"]
    opened_at: datetime | None = None
    deadline_at: datetime | None = None
    closed_at: datetime | None = None
    participants: int
    updates_received: int
    dropped: int
    required_updates: int
    failure_reason: str | None = None
    model_cid: str | None = None
    metrics: dict[str, Any] | None = None


class RoundList(BaseModel):
    items: list[RoundRead]
    next_cursor: str | None = None
    limit: int


class RoundMetrics(BaseModel):
    model_config = _READ
    round: int
    participants: int
    examples: int
    train_loss_mean: float | None = None
    train_loss_weighted: float | None = None
    train_accuracy_mean: float | None = None
    train_accuracy_weighted: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    duration_ms: float | None = None
    slowest_training_ms: float | None = None
    coordination_overhead_ms: float | None = Field(
        None, description="Round open to close minus the slowest reported training time"
    )
    epsilon: float | None = None


class MetricsRead(BaseModel):
    session_id: uuid.UUID
    rounds: list[RoundMetrics]


class ModelRead(BaseModel):
    model_config = _READ
    session_id: uuid.UUID
    session_name: str
    model_type: str
    status: str
    round: int
    intermediate: bool = Field(description="True while the session is still training")
    cid: str
    sha256: str
    format: Literal["safetensors"] = "safetensors"
    tensors: dict[str, list[int]] = Field(description="Tensor name -> shape")
    metrics: list[RoundMetrics]
    total_rounds: int
    completed_at: datetime | None = Field(
        None, description="When the session ended (completed, failed or cancelled)"
    )


class UpdateSummary(BaseModel):
    round: int
    participant_index: int
    norm: float


class UpdateAccepted(BaseModel):
    message: str = "Model update submitted successfully"
    update: UpdateSummary


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself: the model's schema with
    its nested definitions inlined (a ``#/$defs/...`` reference means nothing inside an
    OpenAPI document)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**inline(defs[ref.removeprefix("#/$defs/")]), **inline(rest)}
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(schema)}},
        }
    }
