"""Session, round, participant, metrics and model rows → wire shapes (JSON-ready dicts; the
router encodes datetimes). Token amounts are decimal strings."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from parity.fl import privacy
from parity.fl.models import FLParticipant, FLRound, FLSession

MODEL_FORMAT = "safetensors"  # how global models are stored and named in task configs
# Per-round figures, in the order the metrics endpoint lists them.
ROUND_METRICS = (
    "participants",
    "examples",
    "train_loss_mean",
    "train_loss_weighted",
    "train_accuracy_mean",
    "train_accuracy_weighted",
    "test_loss",
    "test_accuracy",
    "duration_ms",
    "slowest_training_ms",
    "coordination_overhead_ms",
)
# Differential privacy (parity.fl.privacy): epsilon after the round, and the central mode's clip.
OPTIONAL_METRICS = (
    "epsilon",
    "dp_delta",
    "dp_mode",
    "dp_clip_norm",
    "dp_noise_std",
    "dp_expected_updates",
    "dp_num_updates",
    "dp_num_clipped",
    "secagg",
)


def _amount(value: int | None) -> str | None:
    return None if value is None else str(value)


def global_model_ref(s: FLSession) -> dict[str, Any] | None:
    if s.global_model_cid is None:
        return None
    return {
        "round": s.global_model_round,
        "cid": s.global_model_cid,
        "sha256": s.global_model_sha256,
    }


def session_read(s: FLSession, participant_count: int) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "model_type": s.model_type,
        "status": s.status,
        "failure_reason": s.failure_reason,
        "current_round": s.current_round,
        "total_rounds": s.total_rounds,
        "min_participants": s.min_participants,
        "max_participants": s.max_participants,
        "participant_count": participant_count,
        "config": s.config,
        "training_data": s.training_data,
        "seed": s.seed,
        "reward_pool": _amount(s.reward_pool),
        "creator_address": s.creator_address,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "started_at": s.started_at,
        "completed_at": s.completed_at,
        "global_model": global_model_ref(s),
        "privacy": privacy.session_privacy(s),
    }


def round_read(r: FLRound, counts: Mapping[tuple[uuid.UUID, str], int]) -> dict[str, Any]:
    """``counts``: slots per (round id, slot status), as the repository counts them."""
    return {
        "id": r.id,
        "session_id": r.session_id,
        "number": r.number,
        "status": r.status,
        "opened_at": r.opened_at,
        "deadline_at": r.deadline_at,
        "closed_at": r.closed_at,
        "completed_at": r.completed_at,
        "participants": r.participants,
        "updates_received": counts.get((r.id, "submitted"), 0),
        "dropped": counts.get((r.id, "dropped"), 0),
        "required_updates": r.required_updates,
        "failure_reason": r.failure_reason,
        "model_cid": r.model_out_cid,
        "model_sha256": r.model_out_sha256,
        "metrics": round_metrics(r) if r.metrics is not None else None,
    }


def participant_read(
    p: FLParticipant, counts: Mapping[tuple[uuid.UUID, str], int]
) -> dict[str, Any]:
    """``counts``: slots per (participant id, slot status)."""
    return {
        "id": p.id,
        "runner_id": p.runner_id,
        "participant_index": p.participant_index,
        "status": p.status,
        "num_examples": p.num_examples,
        "label_counts": p.label_counts,
        "joined_at": p.joined_at,
        "left_at": p.left_at,
        "updates_submitted": counts.get((p.id, "submitted"), 0),
        "rounds_dropped": counts.get((p.id, "dropped"), 0),
    }


def _ms(later: datetime | None, earlier: datetime) -> float | None:
    if later is None:
        return None
    return round((later - earlier).total_seconds() * 1000.0, 3)


def round_metrics(r: FLRound) -> dict[str, Any]:
    """One round's figures. What aggregation stored wins; the round's duration (opened →
    completed) and the coordination overhead (duration minus the slowest participant's
    reported training time) are derived from its timestamps when it did not store them."""
    stored = r.metrics or {}
    out: dict[str, Any] = {"round": r.number}
    for key in ROUND_METRICS:
        out[key] = stored.get(key)
    if out["duration_ms"] is None:
        out["duration_ms"] = _ms(r.completed_at, r.opened_at)
    slowest = out["slowest_training_ms"]
    if out["coordination_overhead_ms"] is None and out["duration_ms"] is not None and slowest:
        out["coordination_overhead_ms"] = round(out["duration_ms"] - float(slowest), 3)
    for key in OPTIONAL_METRICS:
        if stored.get(key) is not None:
            out[key] = stored[key]
    return out


def metrics_read(s: FLSession, rounds: list[FLRound]) -> dict[str, Any]:
    """The figures of every round that has them (aggregated rounds), oldest first."""
    return {
        "session_id": s.id,
        "rounds": [round_metrics(r) for r in rounds if r.metrics is not None],
    }


def model_read(s: FLSession, rounds: list[FLRound]) -> dict[str, Any]:
    """The latest global model (intermediate until the session completes) and the metrics
    history. The caller checks that the session has a model."""
    return {
        "session_id": s.id,
        "session_name": s.name,
        "model_type": s.model_type,
        "status": s.status,
        "round": s.global_model_round,
        "intermediate": s.status != "completed",
        "cid": s.global_model_cid,
        "sha256": s.global_model_sha256,
        "format": MODEL_FORMAT,
        "tensors": s.model_shapes or {},
        "metrics": metrics_read(s, rounds)["rounds"],
        "total_rounds": s.total_rounds,
        "completed_at": s.completed_at,
    }
