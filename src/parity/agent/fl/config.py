"""The ``fl_train`` task config a runner receives, read strictly.

Shape (set by the server for one participant in one round)::

    {"session_id", "round_id", "round", "participant_index", "num_participants",
     "model_type", "model_config",
     "global_model": {"cid", "sha256", "format": "safetensors", "data_base64"?},
     "data": {"kind": "partition", "cid", "sha256", "format": "npz", "rows"?}
           | {"kind": "runner_dataset", "name", "partition": {"strategy", "options", "seed",
              "num_participants", "participant_index", "test_split"?}},
     "train_config": {"learning_rate", "batch_size", "local_epochs", "mu"?},
     "seed", "deadline_at"?, "update_limits": {"max_norm"?, "max_json_bytes"?}?, "privacy"?}

``global_model.data_base64`` is the model's bytes, which a claim carries when the model is small
(the runner checks them against ``sha256`` and downloads by CID when they are absent or differ).
``privacy`` is what the runner applies itself (local DP, or central DP's clip in a SecAgg+
round); :mod:`parity.agent.fl.local_dp` takes it out first, so one still here is refused.
Every refusal is a :class:`FlTaskError` naming the field by its dotted path.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from parity.core.fl._params import read_float, read_int, read_mapping
from parity.core.fl.errors import FLConfigError
from parity.core.fl.model import ModelSpec, parse_model_spec
from parity.core.fl.partitioning import MAX_PARTICIPANTS, PartitionOptions, parse_options
from parity.core.fl.train import TrainConfig, parse_train_config

__all__ = ["Blob", "FlTask", "FlTaskError", "LocalData", "PartitionRef", "parse_fl_task"]

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}\Z")
_MAX_SEED = 2**63 - 1
T = TypeVar("T")


class FlTaskError(FLConfigError):
    """The task's config is unusable; ``field`` is its dotted path."""


@dataclass(frozen=True)
class Blob:
    """Content in the server's store, named by CID and pinned by its sha256 (lowercase hex)."""

    cid: str
    sha256: str


@dataclass(frozen=True)
class PartitionRef:
    """This participant's rows, prepared by the server as an NPZ with ``X`` and ``y``."""

    blob: Blob
    rows: int | None


@dataclass(frozen=True)
class LocalData:
    """A data set this runner serves by name; the runner partitions it itself."""

    name: str
    options: PartitionOptions
    seed: int
    num_participants: int
    participant_index: int
    test_split: float | None


@dataclass(frozen=True)
class FlTask:
    session_id: str
    round_id: str
    round: int
    participant_index: int
    num_participants: int
    model: ModelSpec
    global_model: Blob
    global_model_inline: bytes | None  # the claim's copy of the model's bytes, unverified
    data: PartitionRef | LocalData
    train: TrainConfig
    seed: int
    max_norm: float | None
    max_json_bytes: int | None


def parse_fl_task(config: Any) -> FlTask:
    """Validate an ``fl_train`` task's config; a :class:`FlTaskError` names the field."""
    cfg = read_mapping(config, "config", FlTaskError)
    num = _count(cfg, "num_participants")
    if cfg.get("privacy") is not None:
        # Training without the privacy the session asked for would give away what it protects.
        raise FlTaskError("privacy", "this runner does not apply privacy settings")
    train_cfg = read_mapping(_required(cfg, "train_config"), "train_config", FlTaskError)
    limits = read_mapping(cfg.get("update_limits") or {}, "update_limits", FlTaskError)
    max_norm = limits.get("max_norm")
    max_json = limits.get("max_json_bytes")
    return FlTask(
        session_id=_text(cfg, "session_id"),
        round_id=_text(cfg, "round_id"),
        round=read_int(_required(cfg, "round"), "round", FlTaskError, minimum=0),
        participant_index=_index(cfg, "participant_index", num),
        num_participants=num,
        model=_core(
            lambda f: f, lambda: parse_model_spec(cfg.get("model_type"), cfg.get("model_config"))
        ),
        global_model=_global_model(cfg),
        global_model_inline=_inline_model(cfg),
        data=_data(cfg),
        train=_core(
            lambda f: f"train_config.{f}",
            lambda: parse_train_config(train_cfg, mu=train_cfg.get("mu")),
        ),
        seed=_seed(cfg),
        max_norm=None
        if max_norm is None
        else read_float(
            max_norm, "update_limits.max_norm", FlTaskError, minimum=0.0, min_exclusive=True
        ),
        max_json_bytes=None
        if max_json is None
        else read_int(max_json, "update_limits.max_json_bytes", FlTaskError, minimum=1),
    )


def _required(cfg: Mapping[str, Any], key: str, prefix: str = "") -> Any:
    if cfg.get(key) is None:
        raise FlTaskError(prefix + key, f"{prefix + key} is required")
    return cfg[key]


def _text(cfg: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = cfg.get(key)
    if not isinstance(value, str) or not value.strip():
        raise FlTaskError(prefix + key, f"{prefix + key} must be a non-empty string")
    return value


def _count(cfg: Mapping[str, Any], key: str, prefix: str = "") -> int:
    value = _required(cfg, key, prefix)
    return read_int(value, prefix + key, FlTaskError, minimum=1, maximum=MAX_PARTICIPANTS)


def _index(cfg: Mapping[str, Any], key: str, num: int, prefix: str = "") -> int:
    value = _required(cfg, key, prefix)
    return read_int(value, prefix + key, FlTaskError, minimum=0, maximum=num - 1)


def _seed(cfg: Mapping[str, Any], prefix: str = "") -> int:
    value = _required(cfg, "seed", prefix)
    return read_int(value, prefix + "seed", FlTaskError, minimum=0, maximum=_MAX_SEED)


def _blob(cfg: Mapping[str, Any], prefix: str, fmt: str) -> Blob:
    if cfg.get("format", fmt) != fmt:
        raise FlTaskError(f"{prefix}format", f"{prefix}format must be {fmt!r}")
    digest = _text(cfg, "sha256", prefix)
    if not _SHA256.match(digest):
        raise FlTaskError(f"{prefix}sha256", f"{prefix}sha256 must be 64 hex digits")
    return Blob(_text(cfg, "cid", prefix), digest.lower())


def _global_model(cfg: Mapping[str, Any]) -> Blob:
    model = read_mapping(_required(cfg, "global_model"), "global_model", FlTaskError)
    return _blob(model, "global_model.", "safetensors")


def _inline_model(cfg: Mapping[str, Any]) -> bytes | None:
    text = cfg["global_model"].get("data_base64")
    if text is None:
        return None
    if not isinstance(text, str):
        raise FlTaskError("global_model.data_base64", "global_model.data_base64 must be a string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise FlTaskError(
            "global_model.data_base64", "global_model.data_base64 is not valid base64"
        ) from None


def _data(cfg: Mapping[str, Any]) -> PartitionRef | LocalData:
    data = read_mapping(_required(cfg, "data"), "data", FlTaskError)
    kind = data.get("kind")
    if kind == "partition":
        rows = data.get("rows")
        return PartitionRef(
            _blob(data, "data.", "npz"),
            None if rows is None else read_int(rows, "data.rows", FlTaskError, minimum=1),
        )
    if kind != "runner_dataset":
        raise FlTaskError("data.kind", "data.kind must be 'partition' or 'runner_dataset'")
    return _local_data(data)


def _local_data(data: Mapping[str, Any]) -> LocalData:
    p = "data.partition."
    part = read_mapping(data.get("partition"), "data.partition", FlTaskError)
    num = _count(part, "num_participants", p)
    split = part.get("test_split")

    def option_field(field: str) -> str:
        return p + "strategy" if field == "split_strategy" else f"{p}options.{field}"

    return LocalData(
        name=_text(data, "name", "data."),
        options=_core(
            option_field, lambda: parse_options(part.get("strategy"), part.get("options"), num)
        ),
        seed=_seed(part, p),
        num_participants=num,
        participant_index=_index(part, "participant_index", num, p),
        test_split=None
        if split is None
        else read_float(
            split, p + "test_split", FlTaskError, minimum=0.0, maximum=0.5, min_exclusive=True
        ),
    )


def _core(where: Callable[[str], str], parse: Callable[[], T]) -> T:
    """Run a core parser; its refusal is re-raised naming the field's path in the task config."""
    try:
        return parse()
    except FLConfigError as exc:
        raise FlTaskError(where(exc.field), exc.reason) from exc
