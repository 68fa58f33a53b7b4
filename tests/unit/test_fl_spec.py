"""FL request validation: the README's session body is accepted and normalized, every required
field is named when missing, NaN/Infinity and wrong types are refused, the core's refusals are
addressed to their body paths, and the model-update body is checked field by field."""

from __future__ import annotations

import copy
import json
import math
import uuid
from typing import Any

import pytest

from parity.core.fl.aggregators import AGGREGATORS, canonical_method, parse_method
from parity.core.fl.model import MODEL_CONFIG_KEYS, MODEL_TYPES, parse_model_spec
from parity.core.fl.partitioning import (
    STRATEGIES,
    STRATEGY_OPTIONS,
    canonical_strategy,
    parse_options,
)
from parity.errors import InvalidInput
from parity.fl.schemas import SESSION_EXAMPLE, SessionCreate, request_body
from parity.fl.spec import parse_model_update, parse_session_create


def body(**changes: Any) -> dict[str, Any]:
    """The README example with top-level keys replaced."""
    out = copy.deepcopy(SESSION_EXAMPLE)
    out.update(changes)
    return out


def refused(payload: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_session_create(payload)
    return caught.value


def without(path: str) -> dict[str, Any]:
    out = body()
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    del node[last]
    return out


def with_value(path: str, value: Any) -> dict[str, Any]:
    out = body()
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


# --- the README body ---------------------------------------------------------------------


def test_the_readme_body_is_accepted_as_written_and_normalized() -> None:
    spec = parse_session_create(body())
    assert (spec.name, spec.description, spec.model_type) == (
        "MNIST Classification",
        "Distributed digit classification",
        "neural_network",
    )
    assert (spec.total_rounds, spec.min_participants, spec.max_participants) == (10, 3, 3)
    assert spec.model.layer_sizes == (784, 128, 10)
    assert spec.method.method == "fedavg"  # federated_averaging is its alias
    assert spec.split_strategy == "dirichlet"  # non_iid is its alias
    assert (spec.train.learning_rate, spec.train.batch_size, spec.train.local_epochs) == (
        0.001,
        32,
        5,
    )
    assert spec.train.mu == 0.0
    assert spec.dataset_cid == "QmYourDatasetCID" and spec.data_format == "csv"
    assert spec.runner_dataset is None and spec.seed is None and spec.test_split is None
    assert spec.reward_pool is None and spec.privacy is None
    config = spec.config_json()
    assert config["aggregation_method"] == "fedavg"
    assert config["model_config"] == {"input_size": 784, "hidden_size": 128, "output_size": 10}
    assert config["min_share"] is None and config["privacy_config"] is None
    data = spec.training_data_json()
    assert data["split_strategy"] == "dirichlet"
    assert data["metadata"] == {"alpha": 0.5, "min_samples": 100, "overlap_ratio": 0.0}
    # Both stored forms are plain JSON.
    assert json.loads(json.dumps(config)) == config
    assert json.loads(json.dumps(data)) == data


def test_creator_address_is_accepted_and_ignored() -> None:
    a = parse_session_create(body(creator_address="0xabc"))
    b = parse_session_create(without("creator_address"))
    c = parse_session_create(body(creator_address=12))
    assert a == b == c


def test_the_docs_model_carries_the_readme_example_and_the_model_config_alias() -> None:
    schema = request_body(SessionCreate)["requestBody"]["content"]["application/json"]["schema"]
    assert schema["example"] == SESSION_EXAMPLE
    config = next(s for s in schema["properties"]["config"]["anyOf"] if "properties" in s)
    assert "model_config" in config["properties"]
    assert "$ref" not in json.dumps(schema)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("federated_averaging", "fedavg"), ("fedavg", "fedavg"), ("FedProx", "fedprox")],
)
def test_aggregation_aliases_are_stored_canonical(given: str, canonical: str) -> None:
    payload = body()
    payload["config"]["aggregation_method"] = given
    # Only fedprox takes mu: FedAvg refuses it as an unknown parameter.
    payload["config"]["aggregation_params"] = {"mu": 0.01} if canonical == "fedprox" else {}
    spec = parse_session_create(payload)
    assert spec.method.method == canonical
    assert spec.train.mu == (0.01 if canonical == "fedprox" else 0.0)


@pytest.mark.parametrize(
    ("given", "canonical", "metadata"),
    [
        ("non_iid", "dirichlet", {"alpha": 0.5}),
        ("random", "iid", {}),
        ("iid", "iid", {}),
        ("label_skew", "label_skew", {"classes_per_participant": 2}),
        ("sequential", "sequential", {}),
    ],
)
def test_strategy_aliases_are_stored_canonical(
    given: str, canonical: str, metadata: dict[str, Any]
) -> None:
    payload = body()
    payload["training_data"]["split_strategy"] = given
    payload["training_data"]["metadata"] = metadata
    assert parse_session_create(payload).split_strategy == canonical


def test_optional_settings_are_typed_and_kept() -> None:
    payload = body(max_participants=5, reward_pool="1000000000000000000")
    payload["training_data"].update(seed=7, test_split=0.2)
    payload["config"].update(
        min_share=0.8, round_timeout_seconds=300, max_update_norm=100, client_selection="random"
    )
    spec = parse_session_create(payload)
    assert spec.max_participants == 5 and spec.reward_pool == 10**18
    assert spec.seed == 7 and spec.test_split == 0.2
    assert spec.min_share == 0.8 and spec.round_timeout_seconds == 300
    assert spec.max_update_norm == 100.0 and spec.client_selection == "random"
    assert spec.training_data_json()["seed"] == 7


def test_a_runner_dataset_replaces_the_cid_and_its_format() -> None:
    payload = body()
    payload["training_data"] = {"runner_dataset": "digits", "split_strategy": "iid"}
    spec = parse_session_create(payload)
    assert (spec.runner_dataset, spec.dataset_cid, spec.data_format) == ("digits", None, None)


def runner_data(**extra: Any) -> dict[str, Any]:
    """The README body on a runner-local data set, with ``extra`` training_data keys."""
    payload = body()
    payload["training_data"] = {"runner_dataset": "digits", "split_strategy": "iid", **extra}
    return payload


def test_max_samples_per_participant_is_kept_with_a_runner_dataset() -> None:
    spec = parse_session_create(runner_data(max_samples_per_participant=500))
    assert spec.max_samples_per_participant == 500
    assert spec.training_data_json()["max_samples_per_participant"] == 500
    unset = parse_session_create(runner_data())
    assert unset.training_data_json()["max_samples_per_participant"] is None


@pytest.mark.parametrize("value", [0, -3, 2.5, "500", True, 2**31, math.nan, [500], {"n": 1}])
def test_max_samples_per_participant_must_be_a_positive_integer(value: Any) -> None:
    error = refused(runner_data(max_samples_per_participant=value))
    assert error.field == "training_data.max_samples_per_participant"
    assert error.category.value == "invalid"


def test_max_samples_per_participant_goes_with_a_runner_dataset_only() -> None:
    payload = body()
    payload["training_data"]["max_samples_per_participant"] = 500
    error = refused(payload)
    assert error.field == "training_data.max_samples_per_participant"
    assert "runner_dataset" in error.message


def test_logistic_regression_is_accepted() -> None:
    payload = body(model_type="logistic_regression")
    payload["config"]["model_config"] = {"input_size": 64, "output_size": 10}
    assert parse_session_create(payload).model.layer_sizes == (64, 10)


def test_partition_options_are_reparsed_for_the_real_participant_count() -> None:
    spec = parse_session_create(body(max_participants=6))
    assert spec.partition_options(6).alpha == (0.5,)


# --- every required field --------------------------------------------------------------------

REQUIRED = [
    "name",
    "model_type",
    "total_rounds",
    "min_participants",
    "training_data",
    "training_data.split_strategy",
    "training_data.dataset_cid",
    "training_data.data_format",
    "config",
    "config.model_config",
    "config.learning_rate",
    "config.batch_size",
    "config.local_epochs",
    "config.aggregation_method",
]


@pytest.mark.parametrize("path", REQUIRED)
def test_every_required_field_missing_is_a_422_naming_it(path: str) -> None:
    error = refused(without(path))
    assert error.field == path
    assert error.category.value == "invalid"


@pytest.mark.parametrize("path", REQUIRED)
def test_a_null_required_field_counts_as_missing(path: str) -> None:
    assert refused(with_value(path, None)).field == path


def test_the_readme_messages_are_used() -> None:
    error = refused(without("config.model_config"))
    assert error.field == "config.model_config"
    assert "model configuration is required - please provide model parameters" in error.message
    assert refused(with_value("config.model_config", {})).field == "config.model_config"
    error = refused(without("training_data.metadata.alpha"))
    assert error.field == "training_data.metadata.alpha"
    assert "alpha parameter is required for non_iid partitioning strategy" in error.message


def test_unknown_aggregation_and_strategy_list_the_valid_ones() -> None:
    error = refused(with_value("config.aggregation_method", "fedsgd"))
    assert error.field == "config.aggregation_method"
    assert "valid:" in error.message and "fedavg" in error.message and "krum" in error.message
    error = refused(with_value("training_data.split_strategy", "zipf"))
    assert error.field == "training_data.split_strategy"
    assert "dirichlet" in error.message and "non_iid" in error.message


@pytest.mark.parametrize("model_type", ["cnn", "linear_regression", "transformer"])
def test_model_types_without_an_executor_are_refused(model_type: str) -> None:
    error = refused(body(model_type=model_type))
    assert error.field == "model_type" and "neural_network" in error.message


# --- types, ranges and NaN ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("total_rounds", True),  # a bool is not an int
        ("total_rounds", "10"),  # a string is not a number
        ("total_rounds", 0),
        ("total_rounds", 10_001),
        ("total_rounds", 2.5),
        ("min_participants", 0),
        ("max_participants", 2),  # below min_participants (3)
        ("name", ""),
        ("name", 5),
        ("config.learning_rate", "0.1"),
        ("config.learning_rate", 0),
        ("config.batch_size", False),
        ("config.local_epochs", 0),
        ("config.model_config.output_size", 1),
        ("config.model_config.hidden_size", -4),
        ("config.min_share", 0),
        ("config.min_share", 1.5),
        ("config.round_timeout_seconds", 0),
        ("config.max_update_norm", 0),
        ("config.client_selection", "fastest"),
        ("training_data.data_format", "parquet"),
        ("training_data.test_split", 0.6),
        ("training_data.seed", -1),
        ("training_data.metadata.alpha", 0),
        ("training_data.metadata.min_samples", 0),
        ("training_data.metadata.overlap_ratio", 2),
        ("reward_pool", 1.5),  # floats are refused for amounts
        ("reward_pool", "1.5"),
        ("reward_pool", "-1"),
    ],
)
def test_wrong_types_and_ranges_are_refused_naming_the_field(path: str, value: Any) -> None:
    assert refused(with_value(path, value)).field == path


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "path",
    [
        "config.learning_rate",
        "training_data.metadata.alpha",
        "training_data.metadata.unused_option",  # refused even where nothing reads it
        "config.model_config.extra",
    ],
)
def test_nan_and_infinity_are_refused_anywhere(path: str, bad: float) -> None:
    error = refused(with_value(path, bad))
    assert error.field == path
    assert "finite" in error.message


@pytest.mark.parametrize(
    "path",
    [
        "name",
        "description",
        "model_type",
        "training_data.dataset_cid",
        "training_data.data_format",
        "training_data.split_strategy",
        "config.aggregation_method",
        "config.client_selection",
    ],
)
def test_nan_in_a_text_field_is_refused_as_not_a_string(path: str) -> None:
    error = refused(with_value(path, math.nan))
    assert error.field == path
    assert error.message == f"{path}: {path} must be a string, not NaN"
    assert "finite" not in refused(with_value(path, -math.inf)).message


@pytest.mark.parametrize("field", ["session_id", "round_id", "task_id", "claim_token"])
def test_nan_in_a_text_field_of_a_model_update_is_refused_as_its_type(field: str) -> None:
    error = update_refused(update(**{field: math.nan}))
    assert error.field == field and "must be a" in error.message and "string" in error.message
    assert "finite" not in error.message


def test_nan_inside_a_list_is_named_by_index() -> None:
    payload = body()
    payload["training_data"]["labels"] = ["a", math.nan]
    assert refused(payload).field == "training_data.labels[1]"


def test_nan_parsed_from_json_text_is_refused() -> None:
    text = json.dumps(body()).replace('"learning_rate": 0.001', '"learning_rate": NaN')
    assert refused(json.loads(text)).field == "config.learning_rate"


@pytest.mark.parametrize(
    "path", ["colour", "config.learning_rates", "training_data.split", "config.min_shares"]
)
def test_unknown_keys_are_refused_so_a_typo_is_never_dropped(path: str) -> None:
    error = refused(with_value(path, 1))
    assert error.field == path and "unknown field" in error.message


# --- unknown keys in the nested objects whose keys depend on another field -----------------

# method -> (valid parameters, an unknown key): the parameters are those the README lists.
METHOD_PARAMS: dict[str, tuple[dict[str, Any], str]] = {
    "fedavg": ({}, "mu"),
    "federated_averaging": ({}, "learning_rate"),
    "fedprox": ({"mu": 0.1}, "muu"),
    "fedadagrad": ({"eta": 0.1, "beta_1": 0.9, "tau": 1e-3}, "beta2"),
    "fedadam": ({"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}, "epsilon"),
    "fedyogi": ({"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}, "eta_l"),
    "fedmedian": ({}, "beta"),
    "median": ({}, "num_malicious"),
    "trimmed_mean": ({"beta": 0.1}, "trim"),
    "fedtrimmedavg": ({"beta": 0.1}, "mu"),
    "krum": ({"num_malicious": 0}, "num_selected"),
    "multi_krum": ({"num_malicious": 0, "num_selected": 2}, "f"),
    "multikrum": ({"num_malicious": 0, "num_selected": 2}, "num_malicous"),
}
ACCEPTED_PARAMS = {
    "fedavg": "(none)",
    "fedprox": "mu",
    "fedadagrad": "beta_1, eta, tau",
    "fedadam": "beta_1, beta_2, eta, tau",
    "fedyogi": "beta_1, beta_2, eta, tau",
    "fedmedian": "(none)",
    "trimmed_mean": "beta",
    "krum": "num_malicious",
    "multi_krum": "num_malicious, num_selected",
}
# model_type -> (valid model_config, an unknown key)
MODEL_CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "neural_network": ({"input_size": 4, "hidden_size": 8, "output_size": 3}, "hiden_size"),
    "logistic_regression": ({"input_size": 4, "output_size": 3}, "hidden_size"),
}
ACCEPTED_MODEL_KEYS = {
    "neural_network": "hidden_size, hidden_sizes, input_size, output_size",
    "logistic_regression": "input_size, output_size",
}
# split strategy -> (valid metadata with every option it takes, an unknown key)
COMMON = {"min_samples": 1, "overlap_ratio": 0.1}
STRATEGY_METADATA: dict[str, tuple[dict[str, Any], str]] = {
    "iid": (COMMON, "alpha"),
    "random": (COMMON, "seed"),  # the seed is training_data.seed, not an option
    "sequential": (COMMON, "shuffle"),
    "stratified": (COMMON, "label_column"),
    "dirichlet": ({**COMMON, "alpha": 0.5, "self_balancing": True}, "alpah"),
    "non_iid": ({**COMMON, "alpha": [1, 2, 3]}, "classes_per_participant"),
    "label_skew": (
        {**COMMON, "classes_per_participant": 2, "class_assignment": "random"},
        "alpha",
    ),
    "shard": (
        {**COMMON, "shards_per_participant": 2, "shard_size": 10, "keep_incomplete_shard": True},
        "shards",
    ),
    "size": ({**COMMON, "partition_sizes": [10, 20, 30]}, "partition_size"),
}
ACCEPTED_OPTIONS = {
    "iid": "min_samples, overlap_ratio",
    "sequential": "min_samples, overlap_ratio",
    "stratified": "min_samples, overlap_ratio",
    "dirichlet": "alpha, min_samples, overlap_ratio, self_balancing",
    "label_skew": "class_assignment, classes_per_participant, min_samples, overlap_ratio",
    "shard": "keep_incomplete_shard, min_samples, overlap_ratio, shard_size, "
    "shards_per_participant",
    "size": "min_samples, overlap_ratio, partition_sizes, size_weights",
}


def with_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    payload = body()
    payload["config"]["aggregation_method"] = method
    payload["config"]["aggregation_params"] = dict(params)
    return payload


def with_model(model_type: str, model_config: dict[str, Any]) -> dict[str, Any]:
    payload = body(model_type=model_type)
    payload["config"]["model_config"] = dict(model_config)
    return payload


def with_strategy(strategy: str, metadata: dict[str, Any]) -> dict[str, Any]:
    payload = body()
    payload["training_data"]["split_strategy"] = strategy
    payload["training_data"]["metadata"] = dict(metadata)
    return payload


def test_the_accepted_key_tables_cover_every_method_model_and_strategy() -> None:
    assert {canonical_method(m) for m in METHOD_PARAMS} == set(AGGREGATORS) == set(ACCEPTED_PARAMS)
    assert set(MODEL_CONFIGS) == set(MODEL_TYPES) == set(MODEL_CONFIG_KEYS)
    strategies = {canonical_strategy(s) for s in STRATEGY_METADATA}
    assert strategies == set(STRATEGIES) == set(STRATEGY_OPTIONS) == set(ACCEPTED_OPTIONS)


def refused_as_unknown(body: dict[str, Any], path: str, owner_and_valid: str) -> None:
    """``body`` is a 422 naming ``path`` as an unknown field, with what defines the keys and
    the keys that are valid there."""
    error = refused(body)
    key = path.rsplit(".", 1)[1]
    assert error.code == "invalid_input"
    assert error.field == path
    assert error.message.endswith(f"unknown field {key!r} {owner_and_valid}")


@pytest.mark.parametrize(("method", "case"), METHOD_PARAMS.items())
def test_every_parameter_a_method_takes_is_accepted_and_kept(
    method: str, case: tuple[dict[str, Any], str]
) -> None:
    params, _ = case
    spec = parse_session_create(with_params(method, params))
    assert dict(spec.method.params) == params


@pytest.mark.parametrize(("method", "case"), METHOD_PARAMS.items())
def test_an_unknown_aggregation_parameter_is_refused_naming_it(
    method: str, case: tuple[dict[str, Any], str]
) -> None:
    params, unknown = case
    canonical = canonical_method(method)
    refused_as_unknown(
        with_params(method, {**params, unknown: 1}),
        f"config.aggregation_params.{unknown}",
        f"for {canonical} aggregation; valid: {ACCEPTED_PARAMS[canonical]}",
    )


def test_fedadagrad_refuses_beta_2_saying_it_has_no_second_moment_decay() -> None:
    # Accepted and ignored, a beta_2 would let a caller believe it changed the method.
    params = {"eta": 0.1, "beta_1": 0.9, "tau": 1e-3, "beta_2": 0.99}
    error = refused(with_params("fedadagrad", params))
    assert error.field == "config.aggregation_params.beta_2"
    assert "valid: beta_1, eta, tau" in error.message
    assert "no second-moment decay" in error.message and "fedadam" in error.message


def test_a_misspelt_required_parameter_is_named_as_unknown_not_as_missing() -> None:
    error = refused(with_params("fedprox", {"muu": 0.1}))
    assert error.field == "config.aggregation_params.muu" and "valid: mu" in error.message


@pytest.mark.parametrize(("model_type", "case"), MODEL_CONFIGS.items())
def test_an_unknown_model_config_key_is_refused_naming_it(
    model_type: str, case: tuple[dict[str, Any], str]
) -> None:
    model_config, unknown = case
    assert parse_session_create(with_model(model_type, model_config)).model_config == model_config
    refused_as_unknown(
        with_model(model_type, {**model_config, unknown: 5}),
        f"config.model_config.{unknown}",
        f"for {model_type} model; valid: {ACCEPTED_MODEL_KEYS[model_type]}",
    )


@pytest.mark.parametrize("key", ["hidden_sizes", "activation"])
def test_logistic_regression_takes_no_hidden_layers(key: str) -> None:
    config = {"input_size": 4, "output_size": 3, key: [8]}
    assert refused(with_model("logistic_regression", config)).field == f"config.model_config.{key}"


@pytest.mark.parametrize(("strategy", "case"), STRATEGY_METADATA.items())
def test_every_option_a_strategy_takes_is_accepted_and_kept(
    strategy: str, case: tuple[dict[str, Any], str]
) -> None:
    metadata, _ = case
    assert parse_session_create(with_strategy(strategy, metadata)).partition_metadata == metadata


@pytest.mark.parametrize(("strategy", "case"), STRATEGY_METADATA.items())
def test_an_unknown_partition_option_is_refused_naming_it(
    strategy: str, case: tuple[dict[str, Any], str]
) -> None:
    metadata, unknown = case
    canonical = canonical_strategy(strategy)
    refused_as_unknown(
        with_strategy(strategy, {**metadata, unknown: 5}),
        f"training_data.metadata.{unknown}",
        f"for {canonical} partitioning strategy; valid: {ACCEPTED_OPTIONS[canonical]}",
    )


def test_an_unknown_method_or_strategy_is_named_before_its_options() -> None:
    error = refused(with_params("fedsgd", {"mu": 0.1}))
    assert error.field == "config.aggregation_method"
    error = refused(with_strategy("dirichletx", {"alpha": 0.5}))
    assert error.field == "training_data.split_strategy"
    error = refused(with_model("cnn", {"input_size": 4, "output_size": 3, "kernel": 3}))
    assert error.field == "model_type"


def test_the_core_parsers_still_ignore_keys_they_do_not_read() -> None:
    """A session stored before the API refused them still starts, and a runner reads a task
    config from an older server: only session create is strict."""
    assert parse_method("fedavg", {"mu": 0.1}).params == {}
    assert parse_options("iid", {"alpha": 0.5}, 3).strategy == "iid"
    spec = parse_model_spec("logistic_regression", {"input_size": 4, "output_size": 3, "x": 1})
    assert spec.layer_sizes == (4, 3)


def test_the_body_must_be_an_object() -> None:
    assert refused([1, 2]).field == "body"
    assert refused(body(config=[1])).field == "config"


def test_dataset_cid_and_runner_dataset_are_exclusive() -> None:
    payload = body()
    payload["training_data"]["runner_dataset"] = "digits"
    assert refused(payload).field == "training_data.dataset_cid"
    payload = body()
    payload["training_data"] = {"runner_dataset": "../etc", "split_strategy": "iid"}
    assert refused(payload).field == "training_data.runner_dataset"


def test_core_refusals_are_addressed_to_their_body_paths() -> None:
    payload = body()
    payload["config"]["aggregation_method"] = "fedadam"
    payload["config"]["aggregation_params"] = {"eta": 0.1, "beta_1": 0.9, "tau": 1e-3}
    assert refused(payload).field == "config.aggregation_params.beta_2"
    payload["config"]["aggregation_method"] = "krum"
    payload["config"]["aggregation_params"] = {"num_malicious": 1}  # needs 5 participants
    error = refused(payload)
    assert error.field == "config.aggregation_params.num_malicious"
    assert "min_participants is 3" in error.message
    payload = body()
    payload["config"]["model_config"] = {"input_size": 4, "hidden_sizes": [8, 0], "output_size": 3}
    assert refused(payload).field == "config.model_config.hidden_sizes[1]"
    payload = body()
    payload["training_data"]["split_strategy"] = "label_skew"
    payload["training_data"]["metadata"] = {"min_samples": 100}
    assert refused(payload).field == "training_data.metadata.classes_per_participant"


def test_a_per_participant_list_needs_a_fixed_participant_count() -> None:
    payload = body(max_participants=4)
    payload["training_data"]["metadata"]["alpha"] = [0.5, 0.5, 0.5]
    error = refused(payload)
    assert error.field == "training_data.metadata.alpha" and "max_participants" in error.message
    payload["max_participants"] = 3
    assert parse_session_create(payload).partition_metadata["alpha"] == [0.5, 0.5, 0.5]


# --- privacy_config ----------------------------------------------------------------------------

DP = {"mode": "central", "noise_multiplier": 1.0, "l2_norm_clip": 1.0, "delta": 1e-5}
SECAGG = {
    "mode": "secagg_plus",
    "num_shares": 3,
    "reconstruction_threshold": 2,
    "clipping_range": 8.0,
    "quantization_range": 2**20,
    "stage_timeout_seconds": 30,
}


@pytest.mark.parametrize(
    "privacy",
    [
        {"differential_privacy": False, "secure_aggregation": False},
        {
            "differential_privacy": False,
            "noise_multiplier": 0.1,
            "l2_norm_clip": 1.0,
            "secure_aggregation": False,
        },
        {"differential_privacy": None},
        {},
    ],
)
def test_privacy_off_in_any_form_is_stored_normalized(privacy: dict[str, Any]) -> None:
    spec = parse_session_create(with_value("config.privacy_config", privacy))
    off = {"differential_privacy": False, "secure_aggregation": False}
    assert spec.privacy == off and spec.config_json()["privacy_config"] == off


@pytest.mark.parametrize(
    "privacy", [{"differential_privacy": DP}, {"differential_privacy": True, **DP}]
)
def test_differential_privacy_in_either_form_is_stored_nested(privacy: dict[str, Any]) -> None:
    spec = parse_session_create(with_value("config.privacy_config", privacy))
    assert spec.privacy is not None and spec.privacy["secure_aggregation"] is False
    assert spec.privacy["differential_privacy"] == {
        **DP,
        "max_epsilon": None,
        "sampling_rate": None,
    }


def test_secure_aggregation_is_stored_with_its_defaults_filled() -> None:
    spec = parse_session_create(with_value("config.privacy_config", {"secure_aggregation": SECAGG}))
    assert spec.privacy is not None and spec.privacy["differential_privacy"] is False
    stored = spec.privacy["secure_aggregation"]
    assert {k: stored[k] for k in SECAGG} == SECAGG and stored["modulus_range"] == 2**32


def test_an_enabled_privacy_config_is_validated_before_it_is_refused() -> None:
    error = refused(with_value("config.privacy_config", {"differential_privacy": True}))
    assert error.code == "invalid_input" and error.field == "config.privacy_config.mode"
    error = refused(with_value("config.privacy_config", {"dp": True}))
    assert error.field == "config.privacy_config.dp"
    payload = with_value("config.privacy_config", {"secure_aggregation": SECAGG})
    payload["config"]["aggregation_method"] = "fedmedian"
    error = refused(payload)
    assert error.code == "incompatible_options"
    assert error.field == "config.privacy_config.secure_aggregation"


# --- model updates -----------------------------------------------------------------------------

UPDATE: dict[str, Any] = {
    "session_id": str(uuid.uuid4()),
    "round_id": str(uuid.uuid4()),
    "claim_token": "tok",
    "weights": {"fc1.weight": [[0.1, 0.2]], "fc1.bias": [0.0]},
    "data_size": 143,
    "loss": 0.12,
    "accuracy": 0.97,
    "training_time_ms": 85,
}


def update(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(UPDATE)
    out.update(changes)
    return {k: v for k, v in out.items() if v is not ...}


def update_refused(payload: dict[str, Any]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_model_update(payload)
    return caught.value


def test_a_model_update_in_the_readme_form_is_accepted() -> None:
    parsed = parse_model_update(
        update(runner_id="r1", gradients={"x": [math.nan]}, update_type="weights", metadata={})
    )
    assert parsed.session_id == uuid.UUID(UPDATE["session_id"])
    assert parsed.weights == UPDATE["weights"] and parsed.update_cid is None
    assert (parsed.data_size, parsed.loss, parsed.accuracy, parsed.training_time_ms) == (
        143,
        0.12,
        0.97,
        85,
    )


def test_a_model_update_by_cid_is_accepted() -> None:
    digest = "ab" * 32
    parsed = parse_model_update(
        update(weights=..., update_cid="bafyexample", update_sha256=digest.upper())
    )
    assert parsed.update_cid == "bafyexample" and parsed.update_sha256 == digest


@pytest.mark.parametrize(
    "field",
    ["session_id", "round_id", "claim_token", "data_size", "loss", "accuracy", "training_time_ms"],
)
def test_a_model_update_missing_a_field_names_it(field: str) -> None:
    assert update_refused(update(**{field: ...})).field == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_id", "not-a-uuid"),
        ("round_id", 5),
        ("data_size", 0),
        ("data_size", True),
        ("loss", math.nan),
        ("loss", "0.1"),
        ("accuracy", 1.01),
        ("accuracy", -0.1),
        ("training_time_ms", -1),
        ("task_id", "x"),
        ("update_sha256", "abc"),
        ("runner", "r1"),  # unknown key
    ],
)
def test_a_model_update_with_a_bad_field_names_it(field: str, value: Any) -> None:
    payload = update(**{field: value})
    if field == "update_sha256":
        payload = update(weights=..., update_cid="bafyx", update_sha256=value)
    assert update_refused(payload).field == field


def test_a_model_update_needs_exactly_one_of_weights_and_update_cid() -> None:
    assert update_refused(update(weights=...)).field == "weights"
    assert update_refused(update(update_cid="bafyx")).field == "weights"
    assert update_refused(update(weights={})).field == "weights"
    assert update_refused(update(weights={"fc1.bias": 3})).field == "weights.fc1.bias"
