"""The session-create request: strict validation into a :class:`SessionSpec`.

The README's request body is accepted as written (``creator_address`` is read and ignored: the
caller's identity is its token). Nothing is defaulted that changes training: every required field
missing, of the wrong type or out of range is a 422 naming it by its dotted path, NaN and
Infinity are refused anywhere in the body, and unknown keys are refused so that a misspelt
optional setting is never silently dropped: at every level, including the nested objects whose
keys depend on another field (``config.aggregation_params`` on the method,
``config.model_config`` on the model type, ``training_data.metadata`` on the split strategy; the
core's parsers ignore such keys, so a session stored before this check still starts). The FL
core validates what it owns (model, training, aggregation, partition options, privacy) and its
refusals are re-addressed to the body path.

``config.privacy_config``: absent, ``null``, or a form with every privacy flag off is stored
normalized as ``{"differential_privacy": false, "secure_aggregation": false}``. A config that
turns differential privacy or secure aggregation on is first validated in full by
:func:`parity.core.fl.privacy_config.parse_privacy_config` (so its own mistakes are named).
Differential privacy (either form) is then checked against the session and stored normalized
(:mod:`parity.fl.privacy`). Secure aggregation (SecAgg+, :mod:`parity.fl.secagg_stages`) is
stored in its nested form. With central DP the runners clip and the server noises the unmasked
sum (:mod:`parity.fl.secagg_dp`); what that cannot do is refused as ``incompatible_options``:
adaptive clipping (the core's check: the clip count is hidden) and participant sampling.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from parity.core.billing.units import AmountError, parse_base_units
from parity.core.fl.aggregators import AGGREGATORS, MethodConfig, canonical_method, parse_method
from parity.core.fl.model import MODEL_CONFIG_KEYS, ModelSpec, parse_model_spec
from parity.core.fl.partitioning import (
    MAX_PARTICIPANTS,
    STRATEGY_OPTIONS,
    PartitionOptions,
    canonical_strategy,
    parse_options,
)
from parity.core.fl.privacy_config import PrivacyConfig, parse_privacy_config
from parity.core.fl.train import TrainConfig, parse_train_config
from parity.errors import InvalidInput
from parity.fl import privacy
from parity.fl.spec_fields import (
    check_finite_tree,
    read_float,
    read_int,
    read_mapping,
    read_str,
    refuse_unknown,
    required,
    translated,
)
from parity.fl.spec_update import MAX_EXAMPLES, ModelUpdate, parse_model_update

__all__ = [
    "CLIENT_SELECTIONS",
    "DATA_FORMATS",
    "MAX_ROUNDS",
    "MAX_ROUND_TIMEOUT",
    "RUNNER_DATASET_NAME",
    "ModelUpdate",
    "SessionSpec",
    "parse_model_update",
    "parse_session_create",
]

DATA_FORMATS = ("csv", "npz", "json")
CLIENT_SELECTIONS = ("random",)
MAX_ROUNDS = 10_000
MAX_ROUND_TIMEOUT = 7 * 24 * 3600
MAX_NAME = 255
MAX_DESCRIPTION = 10_000
MAX_CID_TEXT = 512
MAX_INFO_ITEMS = 65_536
_MAX_SEED = 2**63 - 1
# What a runner may call a local data set (``--fl-dataset NAME=PATH``).
RUNNER_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# fmt: off
_SESSION_KEYS = frozenset((
    "name", "description", "model_type", "total_rounds", "min_participants", "max_participants",
    "creator_address", "reward_pool", "training_data", "config",
))
_DATA_KEYS = frozenset((
    "dataset_cid", "runner_dataset", "data_format", "split_strategy", "seed", "test_split",
    "metadata", "dataset_size", "features", "labels", "max_samples_per_participant",
))
_CONFIG_KEYS = frozenset((
    "aggregation_method", "aggregation_params", "learning_rate", "batch_size", "local_epochs",
    "model_config", "min_share", "round_timeout_seconds", "max_update_norm", "client_selection",
    "privacy_config",
))
# fmt: on
# The fields read as text: a NaN there is refused as not a string (it is not a number either).
_STRING_FIELDS = {
    path: "a string"
    for path in (
        "name",
        "description",
        "model_type",
        "training_data.dataset_cid",
        "training_data.runner_dataset",
        "training_data.data_format",
        "training_data.split_strategy",
        "training_data.metadata.class_assignment",
        "config.aggregation_method",
        "config.client_selection",
        "config.privacy_config.differential_privacy.mode",
        "config.privacy_config.secure_aggregation.mode",
        "config.privacy_config.mode",
    )
}
# Partition options holding one value per participant: they fix the participant count.
_PER_PARTICIPANT = ("alpha", "partition_sizes", "size_weights")
_PRIVACY_OFF = {"differential_privacy": False, "secure_aggregation": False}
# A sentence for a parameter a caller may well expect a method to take.
_PARAM_HINTS = {
    ("fedadagrad", "beta_2"): (
        " (FedAdagrad sums the squared pseudo-gradients: it has no second-moment decay; "
        "use fedadam or fedyogi for one)"
    ),
}


@dataclass(frozen=True)
class SessionSpec:
    """A validated session-create request (canonical names, typed values)."""

    name: str
    description: str
    model_type: str
    model_config: dict[str, Any]
    model: ModelSpec
    total_rounds: int
    min_participants: int
    max_participants: int
    train: TrainConfig
    method: MethodConfig
    split_strategy: str
    partition_metadata: dict[str, Any]
    dataset_cid: str | None
    data_format: str | None
    runner_dataset: str | None
    test_split: float | None
    seed: int | None
    min_share: float | None
    round_timeout_seconds: int | None
    max_update_norm: float | None
    reward_pool: int | None
    privacy: dict[str, Any] | None
    client_selection: str | None = None
    data_info: dict[str, Any] | None = None  # dataset_size / features / labels, as given
    # The most examples one participant's update counts for (runner-local data only).
    max_samples_per_participant: int | None = None

    def config_json(self) -> dict[str, Any]:
        """What the session stores and returns as ``config`` (every key present; ``null`` when
        not set)."""
        return {
            "aggregation_method": self.method.method,
            "aggregation_params": dict(self.method.params),
            "learning_rate": self.train.learning_rate,
            "batch_size": self.train.batch_size,
            "local_epochs": self.train.local_epochs,
            "model_config": dict(self.model_config),
            "min_share": self.min_share,
            "round_timeout_seconds": self.round_timeout_seconds,
            "max_update_norm": self.max_update_norm,
            "client_selection": self.client_selection,
            "privacy_config": dict(self.privacy) if self.privacy is not None else None,
        }

    def training_data_json(self) -> dict[str, Any]:
        """What the session stores and returns as ``training_data``."""
        return {
            "dataset_cid": self.dataset_cid,
            "runner_dataset": self.runner_dataset,
            "data_format": self.data_format,
            "split_strategy": self.split_strategy,
            "metadata": dict(self.partition_metadata),
            "seed": self.seed,
            "test_split": self.test_split,
            "max_samples_per_participant": self.max_samples_per_participant,
            **(self.data_info or {}),
        }

    def partition_options(self, num_participants: int) -> PartitionOptions:
        """The partition options re-validated for the real participant count (at start)."""
        with translated():
            return parse_options(self.split_strategy, self.partition_metadata, num_participants)


def parse_session_create(body: Mapping[str, Any]) -> SessionSpec:
    """Validate a session-create body; a :class:`InvalidInput` names the first field at fault."""
    body = read_mapping(body, "body")
    check_finite_tree(body, expected=_STRING_FIELDS)
    refuse_unknown(body, _SESSION_KEYS, "")
    name = read_str(required(body, "name", "name"), "name", max_length=MAX_NAME)
    description = _description(body.get("description"))
    model_type = read_str(required(body, "model_type", "model_type"), "model_type", max_length=64)
    total_rounds = read_int(
        required(body, "total_rounds", "total_rounds"),
        "total_rounds",
        minimum=1,
        maximum=MAX_ROUNDS,
    )
    min_p = read_int(
        required(body, "min_participants", "min_participants"),
        "min_participants",
        minimum=1,
        maximum=MAX_PARTICIPANTS,
    )
    max_p = min_p
    if body.get("max_participants") is not None:
        max_p = read_int(
            body["max_participants"], "max_participants", minimum=min_p, maximum=MAX_PARTICIPANTS
        )
    reward_pool = _reward_pool(body.get("reward_pool"))
    data = read_mapping(required(body, "training_data", "training_data"), "training_data")
    refuse_unknown(data, _DATA_KEYS, "training_data")
    config = read_mapping(required(body, "config", "config"), "config")
    refuse_unknown(config, _CONFIG_KEYS, "config")

    raw_model = config.get("model_config")
    if model_type in MODEL_CONFIG_KEYS and isinstance(raw_model, Mapping):
        refuse_unknown(
            raw_model,
            MODEL_CONFIG_KEYS[model_type],
            "config.model_config",
            owner=f"{model_type} model",
        )
    with translated():
        model = parse_model_spec(model_type, raw_model)
    model_config = dict(read_mapping(config["model_config"], "config.model_config"))
    method_name = required(config, "aggregation_method", "config.aggregation_method")
    params = config.get("aggregation_params")
    with translated():
        canonical = canonical_method(method_name)
    if isinstance(params, Mapping):
        refuse_unknown(
            params,
            AGGREGATORS[canonical].params,
            "config.aggregation_params",
            owner=f"{canonical} aggregation",
            hint=lambda key: _PARAM_HINTS.get((canonical, key), ""),
        )
    with translated():
        method = parse_method(method_name, params, min_participants=min_p)
        train = parse_train_config(config, mu=method.params.get("mu"))
    source = _data_source(data)
    strategy, metadata = _partitioning(data, min_p, max_p)
    return SessionSpec(
        name=name,
        description=description,
        model_type=model.model_type,
        model_config=model_config,
        model=model,
        total_rounds=total_rounds,
        min_participants=min_p,
        max_participants=max_p,
        train=train,
        method=method,
        split_strategy=strategy,
        partition_metadata=metadata,
        dataset_cid=source[0],
        data_format=source[1],
        runner_dataset=source[2],
        test_split=_test_split(data.get("test_split")),
        seed=_seed(data.get("seed")),
        reward_pool=reward_pool,
        privacy=_privacy(config.get("privacy_config"), method.method, min_p, max_p),
        client_selection=_client_selection(config.get("client_selection")),
        data_info=_data_info(data),
        max_samples_per_participant=_max_samples(data, source[2]),
        **_round_settings(config),
    )


def _description(value: Any) -> str:
    if value is None:
        return ""
    return read_str(value, "description", max_length=MAX_DESCRIPTION, allow_empty=True)


def _reward_pool(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return parse_base_units(value)
    except AmountError as exc:
        raise InvalidInput(
            "reward_pool", f"reward_pool must be a decimal string of base units: {exc}"
        ) from None


def _data_source(data: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(dataset_cid, data_format, runner_dataset)``: exactly one source; ``data_format`` is
    required with a CID and, with a runner dataset, kept only as a hint when given."""
    cid, local = data.get("dataset_cid"), data.get("runner_dataset")
    if (cid is None) == (local is None):
        raise InvalidInput(
            "training_data.dataset_cid",
            "give exactly one of training_data.dataset_cid or training_data.runner_dataset",
        )
    fmt = data.get("data_format")
    if cid is not None:
        fmt = required(data, "data_format", "training_data.data_format")
    if fmt is not None and fmt not in DATA_FORMATS:
        raise InvalidInput(
            "training_data.data_format",
            f"unknown data_format {fmt!r}; valid: {', '.join(DATA_FORMATS)}",
        )
    if cid is not None:
        return read_str(cid, "training_data.dataset_cid", max_length=MAX_CID_TEXT), fmt, None
    name = read_str(local, "training_data.runner_dataset", max_length=64)
    if not RUNNER_DATASET_NAME.fullmatch(name):
        raise InvalidInput(
            "training_data.runner_dataset",
            "a runner dataset name is letters, digits, '_', '.' or '-' (at most 64)",
        )
    return None, fmt, name


def _partitioning(data: Mapping[str, Any], min_p: int, max_p: int) -> tuple[str, dict[str, Any]]:
    strategy = required(data, "split_strategy", "training_data.split_strategy")
    raw = data.get("metadata")
    metadata = dict(read_mapping(raw, "training_data.metadata")) if raw is not None else {}
    with translated():
        canonical = canonical_strategy(strategy)
    refuse_unknown(
        metadata,
        STRATEGY_OPTIONS[canonical],
        "training_data.metadata",
        owner=f"{canonical} partitioning strategy",
    )
    with translated():
        options = parse_options(strategy, metadata, min_p)
    if max_p != min_p:
        for key in _PER_PARTICIPANT:
            if isinstance(metadata.get(key), list):
                raise InvalidInput(
                    f"training_data.metadata.{key}",
                    f"{key} as a list fixes the participant count: max_participants must equal "
                    f"min_participants ({min_p})",
                )
    return options.strategy, metadata


def _max_samples(data: Mapping[str, Any], runner_dataset: str | None) -> int | None:
    """``training_data.max_samples_per_participant``: the most examples one participant's
    update counts for (its FedAvg weight and its reward share), a positive integer. Only with
    a runner dataset: there the counts are the runners' own word, while the server counts a
    partition it cut itself."""
    value = data.get("max_samples_per_participant")
    if value is None:
        return None
    path = "training_data.max_samples_per_participant"
    cap = read_int(value, path, minimum=1, maximum=MAX_EXAMPLES)
    if runner_dataset is None:
        raise InvalidInput(
            path,
            f"{path} caps the example counts runners report for their own data: it goes with "
            "training_data.runner_dataset (with dataset_cid the server counts each "
            "partition's rows itself)",
        )
    return cap


def _test_split(value: Any) -> float | None:
    """0 < x <= 0.5 holds out that share; 0 (or absent) holds out nothing."""
    if value is None:
        return None
    share = read_float(value, "training_data.test_split", minimum=0.0, maximum=0.5)
    return share if share > 0 else None


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    return read_int(value, "training_data.seed", minimum=0, maximum=_MAX_SEED)


def _round_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    share, timeout, norm = (
        config.get("min_share"),
        config.get("round_timeout_seconds"),
        config.get("max_update_norm"),
    )
    return {
        "min_share": None
        if share is None
        else read_float(share, "config.min_share", minimum=0.0, maximum=1.0, min_exclusive=True),
        "round_timeout_seconds": None
        if timeout is None
        else read_int(
            timeout, "config.round_timeout_seconds", minimum=1, maximum=MAX_ROUND_TIMEOUT
        ),
        "max_update_norm": None
        if norm is None
        else read_float(norm, "config.max_update_norm", minimum=0.0, min_exclusive=True),
    }


def _client_selection(value: Any) -> str | None:
    if value is None:
        return None
    if value not in CLIENT_SELECTIONS:
        raise InvalidInput(
            "config.client_selection",
            f"unknown client_selection {value!r}; valid: {', '.join(CLIENT_SELECTIONS)}",
        )
    return str(value)


def _data_info(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The informational keys (``dataset_size``, ``features``, ``labels``), type-checked and
    kept as given; the server reads the real figures from the data."""
    info: dict[str, Any] = {}
    if data.get("dataset_size") is not None:
        info["dataset_size"] = read_int(
            data["dataset_size"], "training_data.dataset_size", minimum=0
        )
    for key in ("features", "labels"):
        value = data.get(key)
        if value is None:
            continue
        path = f"training_data.{key}"
        if not isinstance(value, list) or len(value) > MAX_INFO_ITEMS:
            raise InvalidInput(path, f"{path} must be a list of at most {MAX_INFO_ITEMS} names")
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise InvalidInput(f"{path}[{i}]", f"{path}[{i}] must be a string or a number")
        info[key] = list(value)
    return info or None


def _privacy(value: Any, method: str, min_p: int, max_p: int) -> dict[str, Any] | None:
    if value is None:
        return None
    # The core's refusals already carry the body path (``prefix``) and, for a combination that
    # cannot work, the ``incompatible_options`` code.
    with translated():
        parsed = parse_privacy_config(
            value,
            aggregation_method=method,
            min_participants=min_p,
            max_participants=max_p,
            prefix="config.privacy_config",
        )
    stored: dict[str, Any] = dict(_PRIVACY_OFF)
    if parsed.differential_privacy is not None:
        dp = parsed.differential_privacy
        privacy.check_session(dp, value, min_p, "config.privacy_config")
        stored["differential_privacy"] = privacy.stored_dp(dp)
    if parsed.secure_aggregation is not None:
        stored["secure_aggregation"] = _secure_aggregation(parsed, value, min_p)
    return stored


def _secure_aggregation(parsed: PrivacyConfig, raw: Any, min_p: int) -> dict[str, Any]:
    """The SecAgg+ settings, stored in their nested form (either input form maps to it), once
    the session can run them: every round must be able to reach the reconstruction threshold,
    and central DP on the secure sum takes every participant every round."""
    secagg = parsed.secure_aggregation
    assert secagg is not None
    nested = isinstance(raw, Mapping) and isinstance(raw.get("secure_aggregation"), Mapping)
    where = "config.privacy_config.secure_aggregation" if nested else "config.privacy_config"
    if secagg.reconstruction_threshold > min_p:
        raise InvalidInput(
            f"{where}.reconstruction_threshold",
            f"reconstruction_threshold ({secagg.reconstruction_threshold}) must not exceed "
            f"min_participants ({min_p}): a round with fewer participants can never be unmasked",
        )
    dp = parsed.differential_privacy
    if dp is not None and dp.mode == "central" and dp.accounting_sampling_rate < 1.0:
        dp_nested = isinstance(raw.get("differential_privacy"), Mapping)  # raw: a mapping here
        raise InvalidInput(
            "config.privacy_config"
            + (".differential_privacy" if dp_nested else "")
            + ".sampling_rate",
            "participant sampling does not work with secure aggregation: the noise on a secure "
            "sum is scaled to the number of inputs, which sampling would make depend on who "
            "took part, and a sampled round can fall below reconstruction_threshold; leave "
            "sampling_rate out or turn secure_aggregation off",
            code="incompatible_options",
        )
    return asdict(secagg)
