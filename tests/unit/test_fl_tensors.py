"""Models as safetensors bytes and the checks an uploaded update must pass, each naming the
tensor at fault."""

from __future__ import annotations

import math

import numpy as np
import pytest
from safetensors.numpy import save

from parity.core.fl.errors import TensorError
from parity.core.fl.model import init_weights, parse_model_spec
from parity.core.fl.tensors import (
    check_finite,
    check_layout,
    decode,
    encode,
    from_lists,
    shapes_of,
    to_lists,
    update_norm,
    validate_update,
)

SPEC = parse_model_spec("neural_network", {"input_size": 4, "hidden_size": 3, "output_size": 2})


def weights() -> dict[str, np.ndarray]:
    return init_weights(SPEC, 0)


def test_encode_decode_round_trips_exactly() -> None:
    original = weights()
    data = encode(original, metadata={"round": "3"})
    assert isinstance(data, bytes)
    decoded = decode(data)
    assert set(decoded) == set(original)
    for name in original:
        assert decoded[name].dtype == np.float32
        assert np.array_equal(decoded[name], original[name])


def test_float64_tensors_are_read_as_float32() -> None:
    data = save({"fc1.weight": np.ones((3, 4)), "fc1.bias": np.zeros(3)})
    assert decode(data)["fc1.weight"].dtype == np.float32


def test_garbage_bytes_are_a_tensor_error() -> None:
    with pytest.raises(TensorError) as caught:
        decode(b"definitely not safetensors")
    assert caught.value.field == "model"


def test_integer_tensors_are_refused_by_name() -> None:
    data = save({"fc1.weight": np.ones((3, 4), dtype=np.int32)})
    with pytest.raises(TensorError) as caught:
        decode(data)
    assert caught.value.field == "fc1.weight"


def test_layout_check_names_the_missing_extra_or_misshapen_tensor() -> None:
    expected = SPEC.shapes()
    check_layout(weights(), expected)
    missing = weights()
    del missing["fc2.bias"]
    extra = weights() | {"fc3.weight": np.zeros((1, 1), np.float32)}
    misshapen = weights() | {"fc1.weight": np.zeros((4, 3), np.float32)}
    for bad, name in ((missing, "fc2.bias"), (extra, "fc3.weight"), (misshapen, "fc1.weight")):
        with pytest.raises(TensorError) as caught:
            check_layout(bad, expected)
        assert caught.value.field == name


def test_non_finite_values_are_named() -> None:
    bad = weights()
    bad["fc2.weight"][1, 0] = np.inf
    with pytest.raises(TensorError) as caught:
        check_finite(bad)
    assert caught.value.field == "fc2.weight"


def test_update_norm_is_the_l2_norm_of_the_change() -> None:
    base = weights()
    moved = {n: a.copy() for n, a in base.items()}
    moved["fc1.bias"][0] += 3.0
    moved["fc2.weight"][1, 2] -= 4.0
    assert update_norm(moved, base) == pytest.approx(5.0)


def test_validate_update_applies_the_norm_bound() -> None:
    base = weights()
    moved = {n: a + 1.0 for n, a in base.items()}
    size = sum(a.size for a in base.values())
    assert validate_update(moved, base) == pytest.approx(math.sqrt(size))
    with pytest.raises(TensorError) as caught:
        validate_update(moved, base, max_norm=1.0)
    assert caught.value.field == "weights" and "exceeds" in caught.value.reason


def test_json_lists_flat_or_nested_become_the_expected_shapes() -> None:
    original = weights()
    nested = to_lists(original)
    flat = {n: np.asarray(v).ravel().tolist() for n, v in nested.items()}
    for form in (nested, flat):
        restored = from_lists(form, SPEC.shapes())
        assert shapes_of(restored) == {n: list(s) for n, s in SPEC.shapes().items()}
        assert all(np.array_equal(restored[n], original[n]) for n in original)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("fc1.bias", [1.0, 2.0]),  # wrong count
        ("fc1.bias", [1.0, True, 2.0]),
        ("fc1.bias", [1.0, "2.0", 3.0]),
        ("fc1.bias", [1.0, float("nan"), 3.0]),
        ("fc1.bias", "1,2,3"),
        ("fc9.bias", [1.0]),
        ("fc1.weight", "bool in a nested row"),
        ("fc1.weight", "string in a nested row"),
    ],
)
def test_bad_json_tensors_are_named(name: str, value: object) -> None:
    data = to_lists(weights())
    if value == "bool in a nested row":
        value = [list(row) for row in data[name]]
        value[-1][-1] = True
    elif value == "string in a nested row":
        value = [list(row) for row in data[name]]
        value[0][0] = "0.5"
    data[name] = value  # type: ignore[assignment]
    with pytest.raises(TensorError) as caught:
        from_lists(data, SPEC.shapes())
    assert caught.value.field == name


def test_json_form_missing_a_tensor_is_named() -> None:
    data = to_lists(weights())
    del data["fc2.weight"]
    with pytest.raises(TensorError) as caught:
        from_lists(data, SPEC.shapes())
    assert caught.value.field == "fc2.weight"


def test_a_value_past_float32s_range_is_refused_without_a_warning() -> None:
    import warnings

    data = to_lists(weights())
    data["fc1.bias"] = [1e308, *data["fc1.bias"][1:]]  # finite as a double, not as a float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TensorError, match="past float32's range") as caught:
            from_lists(data, SPEC.shapes())
    assert caught.value.field == "fc1.bias"
