"""FL training data: the three file formats read the same data, class names become sorted ids,
bad files are refused naming the problem, the test split is seeded and stratified, partitions
are disjoint and deterministic, and partition bytes round-trip without pickle."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from parity.core.fl.model import parse_model_spec
from parity.errors import InvalidInput
from parity.fl import datasets
from parity.fl.datasets import (
    check_model_fit,
    decode_arrays,
    encode_arrays,
    holdout_split,
    load_dataset,
    plan_partitions,
)

RNG = np.random.default_rng(3)
X = RNG.normal(size=(40, 3)).round(3)
NAMES = np.array(["dog", "cat", "emu", "cat"] * 10)  # sorted: cat=0, dog=1, emu=2
IDS = np.array([1, 0, 2, 0] * 10)


def as_csv(x: np.ndarray, labels: np.ndarray, header: str = "a,b,c,label") -> bytes:
    lines = [header] + [
        ",".join([*map(str, row), str(lab)]) for row, lab in zip(x, labels, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def as_json(x: np.ndarray, labels: np.ndarray) -> bytes:
    return json.dumps({"features": x.tolist(), "labels": labels.tolist()}).encode()


def as_npz(x: np.ndarray, labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X=x, y=labels)
    return buffer.getvalue()


WRITERS = {"csv": as_csv, "json": as_json, "npz": as_npz}


def refused(data: bytes, fmt: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        load_dataset(data, fmt)
    assert caught.value.field == "training_data.dataset_cid"
    return caught.value


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json", "npz"])
def test_every_format_reads_the_same_features_and_class_names(fmt: str) -> None:
    x, y, classes = load_dataset(WRITERS[fmt](X, NAMES), fmt)
    assert x.dtype == np.float32 and x.shape == (40, 3)
    np.testing.assert_allclose(x, X.astype(np.float32))
    assert classes == ["cat", "dog", "emu"]
    assert y.dtype == np.int64 and y.tolist() == IDS.tolist()


@pytest.mark.parametrize("fmt", ["csv", "json", "npz"])
def test_whole_number_labels_are_kept_as_class_ids(fmt: str) -> None:
    labels = np.array([7, 3, 5, 3] * 10)
    _, y, classes = load_dataset(WRITERS[fmt](X, labels), fmt)
    assert y.tolist() == labels.tolist()
    assert classes == ["3", "5", "7"]


def test_integral_float_labels_are_class_ids() -> None:
    _, y, _ = load_dataset(as_csv(X, np.array(["1.0", "2.0", "0", "1"] * 10)), "csv")
    assert y.tolist() == [1, 2, 0, 1] * 10


def test_npz_features_of_more_dimensions_are_flattened_per_row() -> None:
    images = RNG.normal(size=(6, 2, 2))
    x, _, _ = load_dataset(as_npz(images, np.arange(6) % 2), "npz")
    assert x.shape == (6, 4)


def test_a_bom_and_blank_lines_are_tolerated_in_csv() -> None:
    data = b"\xef\xbb\xbf" + as_csv(X[:4], IDS[:4]) + b"\n\n"
    x, y, _ = load_dataset(data, "csv")
    assert x.shape == (4, 3) and y.tolist() == IDS[:4].tolist()


@pytest.mark.parametrize(
    ("data", "fmt", "words"),
    [
        (b"", "csv", "empty"),
        (b"a,b,label\n", "csv", "no rows"),
        (b"label\n1\n", "csv", "at least one feature column"),
        (b"a,b,label\n1,2,0\n1,0\n", "csv", "line 3 has 2 values"),
        (b"a,b,label\n1,2,0\n1,x,1\n", "csv", "line 3, column 'b'"),
        (b"a,b,label\n1,nan,0\n", "csv", "NaN"),
        (b"a,b,label\n1,2,0.5\n", "csv", "whole class ids"),
        (b"\xff\xfe,a\n", "csv", "UTF-8"),
        (b"not json", "json", "unreadable"),
        (b'{"features": [[1, 2]]}', "json", "object"),
        (b'{"features": [[1, 2], [3]], "labels": [0, 1]}', "json", "features[1]"),
        (b'{"features": [[1, true]], "labels": [0]}', "json", "not a number"),
        (b'{"features": [[1, 2]], "labels": [0, 1]}', "json", "2 labels for 1 rows"),
        (b'{"features": [[1, 2], [3, 4]], "labels": [0, "a"]}', "json", "mix"),
        (b'{"features": [], "labels": []}', "json", "no rows"),
        (b"PK\x03\x04garbage", "npz", "not a readable NPZ"),
        (b"plain bytes", "npz", "not a readable NPZ"),
    ],
)
def test_bad_files_are_refused_naming_the_problem(data: bytes, fmt: str, words: str) -> None:
    assert words in refused(data, fmt).message


def npz(x: Any, y: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X=np.asarray(x), y=np.asarray(y))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "fmt", "where"),
    [
        # A CSV file's rows are named by their line in the file: 1-based, the header is line 1
        # (blank lines count, as an editor counts them).
        (b"a,b,label\n1,2,0\n1,0\n3,4,1\n", "csv", "line 3 has 2 values"),
        (b"a,b,label\n1,2,0\nnan,0,1\n3,4,1\n", "csv", "line 3 contains NaN"),
        (b"a,b,label\n\n1,2,0\n\n3,inf,1\n", "csv", "line 5 contains NaN"),
        (b"a,b,label\n1,2,0\n3,4,nan\n", "csv", "the label of line 3 is NaN"),
        (b"a,b,label\n1,2,0\n3,4,1.5\n", "csv", "the label of line 3 is 1.5"),
        # NPZ and JSON rows by their index in the array.
        (npz([[1.0, 2.0], [np.nan, 0.0]], [0, 1]), "npz", "X[1] contains NaN"),
        (b'{"features": [[1, 2], [NaN, 1]], "labels": [0, 1]}', "json", "features[1] contains"),
    ],
)
def test_a_bad_row_is_named_where_the_file_shows_it(data: bytes, fmt: str, where: str) -> None:
    message = refused(data, fmt).message
    assert where in message
    assert "row " not in message  # one way of counting: never a 0-based "row N" beside "line N"


def test_npz_needs_x_and_y_and_never_loads_pickles() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, features=X, y=IDS)
    assert "'X'" in refused(buffer.getvalue(), "npz").message
    buffer = io.BytesIO()
    np.savez(buffer, X=np.array([{"a": 1}] * 2, dtype=object), y=np.array([0, 1]))
    assert "pickle" in refused(buffer.getvalue(), "npz").message.lower()
    buffer = io.BytesIO()
    np.save(buffer, X)
    assert "single .npy" in refused(buffer.getvalue(), "npz").message


@pytest.mark.parametrize("data", [b"p0,p1,label\n1,2,0\n", b"not a zip", b""])
def test_bytes_that_are_no_npz_archive_are_said_to_be_so_not_a_pickle(data: bytes) -> None:
    """numpy reads any non-zip bytes as a pickle: the message said the file "contains pickled
    (object) data" and told how to load it unsafely."""
    message = refused(data, "npz").message
    assert "not a zip of .npy arrays" in message and "data_format" in message
    assert "pickle" not in message.lower()


def test_the_data_must_fit_the_model() -> None:
    x, y, _ = load_dataset(as_csv(X, IDS), "csv")
    check_model_fit(
        x,
        y,
        parse_model_spec("neural_network", {"input_size": 3, "hidden_size": 4, "output_size": 3}),
    )
    with pytest.raises(InvalidInput) as caught:
        check_model_fit(
            x, y, parse_model_spec("logistic_regression", {"input_size": 3, "output_size": 2})
        )
    assert caught.value.field == "config.model_config.output_size"
    assert "0..2" in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        check_model_fit(
            x, y, parse_model_spec("logistic_regression", {"input_size": 5, "output_size": 3})
        )
    assert caught.value.field == "config.model_config.input_size"


# --- partition bytes -------------------------------------------------------------------------


def test_arrays_round_trip_and_equal_arrays_give_equal_bytes() -> None:
    x, y = X.astype(np.float32), IDS.astype(np.int64)
    data = encode_arrays(x, y)
    assert data == encode_arrays(x.copy(), y.copy())
    back_x, back_y = decode_arrays(data)
    assert back_x.dtype == np.float32 and back_y.dtype == np.int64
    np.testing.assert_array_equal(back_x, x)
    np.testing.assert_array_equal(back_y, y)
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:  # a standard .npz
        assert sorted(archive.files) == ["X", "y"]


def test_decoding_refuses_what_is_not_a_partition() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_arrays(b"nope", field="data.cid")
    assert caught.value.field == "data.cid"
    with pytest.raises(InvalidInput):
        decode_arrays(as_npz(X, NAMES))  # class names are not ids


# --- test split and partitions -----------------------------------------------------------------


def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def test_the_test_split_is_seeded_stratified_and_sized() -> None:
    _, y = digits()
    train, test = holdout_split(y, 0.2, seed=5)
    assert len(test) == int(np.ceil(0.2 * len(y))) and len(train) + len(test) == len(y)
    assert not set(train.tolist()) & set(test.tolist())
    expected = np.bincount(y) * len(test) / len(y)
    assert np.abs(np.bincount(y[test], minlength=10) - expected).max() < 1
    again = holdout_split(y, 0.2, seed=5)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(holdout_split(y, 0.2, seed=6)[1], test)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("share", [0.2, 0.33])
def test_the_test_split_equals_scikit_learns_train_test_split(seed: int, share: float) -> None:
    from sklearn.model_selection import train_test_split

    _, y = digits()
    rows = np.arange(len(y))
    want_train, want_test = train_test_split(rows, test_size=share, stratify=y, random_state=seed)
    train, test = holdout_split(y, share, seed=seed)
    np.testing.assert_array_equal(train, want_train)  # same rows, same order
    np.testing.assert_array_equal(test, want_test)
    odd = np.array([0, 0, 0, 1, 2, 2, 2, 2], dtype=np.int64)  # a single-row class: unstratified
    want = train_test_split(np.arange(8), test_size=0.25, random_state=seed)
    for got, expected in zip(holdout_split(odd, 0.25, seed=seed), want, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_every_class_keeps_a_training_row() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2], dtype=np.int64)
    train, test = holdout_split(y, 0.5, seed=0)
    assert len(test) == 4 and set(y[train].tolist()) == {0, 1, 2}


def test_a_class_with_one_row_falls_back_to_a_plain_random_split() -> None:
    y = np.array([0] * 10 + [1], dtype=np.int64)
    train, test = holdout_split(y, 0.5, seed=1)
    assert len(test) == 6 and len(train) == 5
    np.testing.assert_array_equal(holdout_split(y, 0.5, seed=1)[1], test)


def test_too_few_rows_for_a_test_split_is_refused() -> None:
    with pytest.raises(InvalidInput):
        holdout_split(np.array([0], dtype=np.int64), 0.5, seed=0)


def plan(seed: int = 0, **kw: Any) -> Any:
    x, y = digits()
    options: dict[str, Any] = {
        "strategy": "non_iid",
        "metadata": {"alpha": 0.5, "min_samples": 10},
        "num_participants": 10,
        "seed": seed,
        "test_split": 0.2,
    }
    options.update(kw)
    return x, y, plan_partitions(x, y, **options)


def test_digits_with_dirichlet_half_for_ten_participants_is_partitioned() -> None:
    x, y, result = plan()
    assert len(result.participants) == 10 and min(result.sizes) >= 10
    assert result.test is not None and result.test_indices is not None
    assert len(result.test_indices) == 360
    train_rows = np.concatenate(result.indices)
    assert len(train_rows) == len(set(train_rows.tolist())) == len(y) - 360  # disjoint, complete
    assert not set(train_rows.tolist()) & set(result.test_indices.tolist())
    for rows, (px, py), hist, size in zip(
        result.indices, result.participants, result.histograms, result.sizes, strict=True
    ):
        np.testing.assert_array_equal(px, x[rows])
        np.testing.assert_array_equal(py, y[rows])
        assert sum(hist.values()) == size == len(rows)
    # Dirichlet(0.5) is skewed: some participant misses some class.
    assert min(len(h) for h in result.histograms) < 10


def test_partitions_are_deterministic_for_a_seed() -> None:
    _, _, a = plan(seed=4)
    _, _, b = plan(seed=4)
    _, _, c = plan(seed=5)
    for left, right in zip(a.indices, b.indices, strict=True):
        np.testing.assert_array_equal(left, right)
    assert any(not np.array_equal(p, q) for p, q in zip(a.indices, c.indices, strict=False))


def test_no_test_split_partitions_every_row() -> None:
    _, y, result = plan(strategy="iid", metadata={}, test_split=None)
    assert result.test is None and result.test_indices is None
    assert sorted(np.concatenate(result.indices).tolist()) == list(range(len(y)))


def test_partition_refusals_name_the_option() -> None:
    with pytest.raises(InvalidInput) as caught:
        plan(metadata={"alpha": 0.5, "min_samples": 500})
    assert caught.value.field == "training_data.metadata.min_samples"
    with pytest.raises(InvalidInput) as caught:
        plan(metadata={})
    assert caught.value.field == "training_data.metadata.alpha"


def test_a_data_set_too_large_to_read_is_refused_before_it_is_inflated() -> None:
    """A compressed NPZ of a few hundred KB may hold tens of millions of values: the server
    counts them from the arrays' headers, before anything is decompressed; a runner reading
    its own file (bounded=False) reads it whole."""
    rows = datasets.MAX_DATASET_VALUES // 2 + 1
    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.zeros((rows, 2), np.uint8), y=np.zeros(1, np.int64))
    bomb = buf.getvalue()
    assert len(bomb) < 200_000
    with pytest.raises(InvalidInput) as caught:
        load_dataset(bomb, "npz")
    assert f"hold {2 * rows + 1} values" in caught.value.message
    assert caught.value.field == "training_data.dataset_cid"

    wide = "a,b,label\n" + "0,0,1\n" * (datasets.MAX_TEXT_VALUES // 3 + 1)
    with pytest.raises(InvalidInput, match="a text data set may hold at most"):
        load_dataset(wide.encode(), "csv")
    numbers = json.dumps({"features": [[0, 0]] * (datasets.MAX_TEXT_VALUES // 3 + 1),
                          "labels": [0] * (datasets.MAX_TEXT_VALUES // 3 + 1)})  # fmt: skip
    with pytest.raises(InvalidInput, match="a text data set may hold at most"):
        load_dataset(numbers.encode(), "json")
    small = "a,b,label\n" + "0,1,1\n1,0,0\n" * 10
    x, y, _ = load_dataset(small.encode(), "csv")
    assert x.shape == (20, 2) and set(y) == {0, 1}


def test_a_runner_reads_its_own_large_file_whole() -> None:
    rows = datasets.MAX_TEXT_VALUES // 3 + 1
    text = "a,b,label\n" + "0,1,1\n" * rows
    x, y, _ = load_dataset(text.encode(), "csv", bounded=False)
    assert x.shape == (rows, 2) and set(y) == {1}
