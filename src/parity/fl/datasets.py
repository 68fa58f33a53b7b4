"""A session's training data, as pure functions over bytes: read the file, check it fits the
model, hold out a test split, cut the rest into participants' partitions, and encode each as NPZ.

Formats (``training_data.data_format``):

- ``csv``: a header row, then one row per example; the label is the last column and every other
  column is a number;
- ``npz``: arrays ``X`` (rows first; more than two dimensions are flattened per row) and ``y``;
- ``json``: ``{"features": [[...], ...], "labels": [...]}``.

Labels: whole numbers are kept as the class ids they are; otherwise (names such as ``"cat"``)
the distinct labels, sorted, become class ids ``0..C-1``. ``classes`` lists the class of each id
as text. Every refusal is a 422 on ``training_data.dataset_cid`` naming the problem and where
it is: in a CSV file by its line (``line 3``: 1-based, the header is line 1), in an NPZ or JSON
file by its index in the array (``X[2]``, ``features[2]``, 0-based).

Test split (:func:`holdout_split`): ``ceil(test_split * rows)`` rows, stratified when every
class has at least two rows, else a plain random draw: for a seed, exactly the rows (and their
order) of scikit-learn's ``train_test_split(stratify=y, random_state=seed)``, so published
numpy/Flower experiments on the same data are reproduced. Partitions are then cut from the
training rows by :func:`parity.core.fl.partitioning.partition` with the same seed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from parity.core.fl.model import ModelSpec
from parity.core.fl.partitioning import (
    PartitionOptions,
    label_histogram,
    parse_options,
    partition,
)
from parity.errors import InvalidInput
from parity.fl.spec_fields import translated

__all__ = [
    "DATA_FIELD",
    "Features",
    "Labels",
    "PartitionPlan",
    "check_model_fit",
    "decode_arrays",
    "encode_arrays",
    "holdout_split",
    "load_dataset",
    "plan_partitions",
]

Features = NDArray[np.float32]
Labels = NDArray[np.int64]
Indices = NDArray[np.int64]
# Names a data row (by its 0-based index) as the file shows it: ``line 3``, ``X[1]``.
RowName = Callable[[int], str]
DATA_FIELD = "training_data.dataset_cid"
NPY_MAGIC = b"\x93NUMPY"  # a single .npy array (refused below with its own reason)
# What the server reads into memory from one data set, checked before reading it: a
# compressed NPZ of 570 KB can hold 50 M values, and a text format costs a Python object per
# value while it is parsed (a 24 MB CSV of 4 M rows took 1.7 GB). Larger data sets stay on
# the runners (training_data.runner_dataset).
MAX_DATASET_VALUES = 1 << 24  # an NPZ's X and y together (16,777,216)
MAX_TEXT_VALUES = 1 << 21  # a CSV's cells, a JSON file's numbers (2,097,152)
_NPZ_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same arrays always give the same bytes (CID)


def _bad(problem: str, field: str = DATA_FIELD) -> InvalidInput:
    return InvalidInput(field, problem)


# -- reading


def load_dataset(
    data: bytes, data_format: str, *, bounded: bool = True
) -> tuple[Features, Labels, list[str]]:
    """``(features float32 [rows, columns], labels int64 class ids, class names)``. ``bounded``
    (the server reading an uploaded data set): refused past MAX_DATASET_VALUES /
    MAX_TEXT_VALUES before it is read; a runner reading its own files reads them whole."""
    row_name: RowName
    if data_format == "csv":
        x, raw_labels, lines = _read_csv(data, bounded)
        row_name = _line_of(lines)
    elif data_format == "npz":
        x, raw_labels = _read_npz(data, DATA_FIELD, "X", bounded)
        row_name = "X[{}]".format
    elif data_format == "json":
        x, raw_labels = _read_json(data, bounded)
        row_name = "features[{}]".format
    else:
        raise _bad(f"unknown data_format {data_format!r}", "training_data.data_format")
    y, classes = _class_ids(raw_labels, row_name)
    return _checked(x, y, DATA_FIELD, row_name), y, classes


def _line_of(lines: Sequence[int]) -> RowName:
    def name(row: int) -> str:
        return f"line {lines[row]}"

    return name


def _read_csv(data: bytes, bounded: bool) -> tuple[NDArray[Any], NDArray[Any], list[int]]:
    """The features, the labels (text) and each data row's line in the file (1-based, the
    header is line 1; blank lines are skipped, so the lines are kept)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _bad(f"the CSV file is not UTF-8 text (byte {exc.start})") from None
    if bounded:
        first = text.split("\n", 1)[0]
        _check_text_values((text.count("\n") + 1) * (first.count(",") + 1), "CSV cells")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        rows = [(reader.line_num, row) for row in reader if row and any(c.strip() for c in row)]
    except csv.Error as exc:
        raise _bad(f"the CSV file is unreadable: {exc}") from None
    if not header:
        raise _bad("the CSV file is empty (a header row is expected)")
    width = len(header)
    if width < 2:
        raise _bad("the CSV header needs at least one feature column and the label column")
    if not rows:
        raise _bad("the CSV file has a header but no rows")
    for line, row in rows:
        if len(row) != width:
            raise _bad(f"line {line} has {len(row)} values; the header has {width} columns")
    cells = np.array([row[:-1] for _, row in rows], dtype=str)
    try:
        x = np.char.strip(cells).astype(np.float64)
    except ValueError:
        raise _bad(_first_bad_cell(rows, header)) from None
    labels = np.array([row[-1].strip() for _, row in rows], dtype=str)
    return x, labels, [line for line, _ in rows]


def _first_bad_cell(rows: Sequence[tuple[int, list[str]]], header: list[str]) -> str:
    for line, row in rows:
        for column, cell in zip(header, row[:-1], strict=False):
            try:
                float(cell)
            except ValueError:
                return f"line {line}, column {column!r}: {cell[:40]!r} is not a number"
    return "a feature value is not a number"


def _read_npz(
    data: bytes, field: str, x_key: str, bounded: bool = True
) -> tuple[NDArray[Any], NDArray[Any]]:
    if not data.startswith(NPY_MAGIC) and not zipfile.is_zipfile(io.BytesIO(data)):
        # numpy takes any other bytes for a pickle and says the file "contains pickled data"
        # and how to load it unsafely: wrong about a CSV or text file, and bad advice.
        hint = "; is training_data.data_format right?" if field == DATA_FIELD else ""
        raise _bad(
            f"not a readable NPZ file: not a zip of .npy arrays (as numpy.savez writes){hint}",
            field,
        )
    if bounded:
        _check_npz_values(data, field)
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise _bad("not an NPZ archive (a single .npy array was given)", field)
        with loaded as archive:
            keys = set(archive.files)
            if x_key not in keys or "y" not in keys:
                found = ", ".join(sorted(keys)) or "none"
                raise _bad(f"the NPZ file needs arrays {x_key!r} and 'y' (found: {found})", field)
            x, y = archive[x_key], archive["y"]
    except InvalidInput:
        raise
    except Exception as exc:  # numpy and zipfile raise several types for malformed input
        raise _bad(f"not a readable NPZ file (no pickled objects allowed): {exc}", field) from None
    if x.dtype.kind not in "fiu":
        raise _bad(f"array {x_key!r} must hold numbers, not {x.dtype}", field)
    if x.ndim < 2:
        raise _bad(f"array {x_key!r} must have one row per example (2 or more dimensions)", field)
    return x.reshape(x.shape[0], -1).astype(np.float64), y


def _check_text_values(count: int, what: str) -> None:
    if count > MAX_TEXT_VALUES:
        raise _bad(
            f"about {count} {what}: a text data set may hold at most {MAX_TEXT_VALUES} values "
            "(write a larger one as NPZ, or keep it on the runners: training_data.runner_dataset)"
        )


def _check_npz_values(data: bytes, field: str) -> None:
    """The arrays' sizes from their headers, before anything is decompressed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            total = sum(_npy_values(archive, info) for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # np.load names what is wrong with it
    if total > MAX_DATASET_VALUES:
        raise _bad(
            f"the NPZ arrays hold {total} values: at most {MAX_DATASET_VALUES} are read by "
            "the server (keep a larger data set on the runners: training_data.runner_dataset)",
            field,
        )


def _npy_values(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The values of one member, from its .npy header (zipfile never inflates a member past
    its stated size, so for a header format this does not read, that size bounds them)."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape = np.lib.format.read_array_header_1_0(member)[0]
        elif version == (2, 0):
            shape = np.lib.format.read_array_header_2_0(member)[0]
        else:
            return int(info.file_size)
    return math.prod(shape)


def _read_json(data: bytes, bounded: bool) -> tuple[NDArray[Any], NDArray[Any]]:
    if bounded:
        _check_text_values(data.count(b",") + 1, "JSON values")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise _bad(f"the JSON file is unreadable: {exc}") from None
    if not isinstance(doc, Mapping) or "features" not in doc or "labels" not in doc:
        raise _bad('the JSON file must be an object {"features": [[...]], "labels": [...]}')
    features, labels = doc["features"], doc["labels"]
    if not isinstance(features, list) or not isinstance(labels, list):
        raise _bad("features and labels must be lists")
    width = len(features[0]) if features and isinstance(features[0], list) else 0
    for i, row in enumerate(features):
        if not isinstance(row, list) or len(row) != width:
            raise _bad(f"features[{i}] must be a list of {width} numbers (as features[0])")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in row):
            raise _bad(f"features[{i}] holds a value that is not a number")
    kinds = {"name" if isinstance(v, str) else "number" for v in labels}
    if any(isinstance(v, bool) or not isinstance(v, str | int | float) for v in labels):
        raise _bad("labels must be numbers or names")
    if len(kinds) > 1:
        raise _bad("labels mix numbers and names")
    return np.array(features, dtype=np.float64).reshape(len(features), width), np.array(labels)


def _class_ids(raw: NDArray[Any], row_name: RowName) -> tuple[Labels, list[str]]:
    """Whole-number labels stay as they are; names become ids in sorted order."""
    if raw.ndim != 1:
        raise _bad("labels must be one label per row")
    if raw.dtype.kind in "US":
        text = raw.astype(str)
        try:
            numbers = text.astype(np.float64)
        except ValueError:
            classes, ids = np.unique(text, return_inverse=True)
            return ids.astype(np.int64), [str(c) for c in classes.tolist()]
        raw = numbers
    if raw.dtype.kind == "b" or raw.dtype.kind not in "fiu":
        raise _bad(f"labels must be class ids or names, not {raw.dtype}")
    if raw.dtype.kind == "f":
        if raw.size and not np.isfinite(raw).all():
            row = int(np.flatnonzero(~np.isfinite(raw))[0])
            raise _bad(f"the label of {row_name(row)} is NaN or infinity")
        if raw.size and not (np.mod(raw, 1) == 0).all():
            row = int(np.flatnonzero(np.mod(raw, 1) != 0)[0])
            raise _bad(
                f"the label of {row_name(row)} is {raw[row]:g}: numeric labels must be whole "
                "class ids (0, 1, 2, ...)"
            )
    ids = raw.astype(np.int64)
    return ids, [str(c) for c in np.unique(ids).tolist()]


def _checked(
    x: NDArray[Any], y: Labels, field: str, row_name: RowName = "row {}".format
) -> Features:
    if x.shape[0] == 0:
        raise _bad("the data set has no rows", field)
    if x.shape[1] == 0:
        raise _bad("the data set has no feature columns", field)
    if x.shape[0] != y.shape[0]:
        raise _bad(f"{y.shape[0]} labels for {x.shape[0]} rows", field)
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise _bad(f"{row_name(row)} contains NaN or infinity", field)
    if (np.abs(x) > np.finfo(np.float32).max).any():
        raise _bad("a feature value is too large for float32", field)
    return x.astype(np.float32)


def check_model_fit(x: Features, y: Labels, model: ModelSpec) -> None:
    """The data fits the model: one input per feature column, labels in ``0..output_size-1``."""
    if x.shape[1] != model.input_size:
        raise InvalidInput(
            "config.model_config.input_size",
            f"the data set has {x.shape[1]} feature columns; input_size is {model.input_size}",
        )
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= model.output_size:
        raise InvalidInput(
            "config.model_config.output_size",
            f"the labels span {low}..{high}; output_size {model.output_size} covers "
            f"0..{model.output_size - 1}",
        )


# -- splitting


@dataclass(frozen=True)
class PartitionPlan:
    """Each participant's rows (in participant order), the held-out test rows (or ``None``),
    and what a session shows of the plan: sizes and per-partition label counts."""

    participants: list[tuple[Features, Labels]]
    indices: list[Indices]  # rows of the whole data set, per participant
    test: tuple[Features, Labels] | None
    test_indices: Indices | None
    histograms: list[dict[str, int]]
    sizes: list[int]
    options: PartitionOptions


def holdout_split(y: Labels, test_split: float, seed: int) -> tuple[Indices, Indices]:
    """``(train rows, test rows)``, the same rows in the same order as scikit-learn's
    ``train_test_split(..., test_size=test_split, stratify=y, random_state=seed)`` (its
    ``StratifiedShuffleSplit``); without stratification (a class with a single row) as its
    ``ShuffleSplit``. Partitions are cut from the training rows in this order."""
    n = int(y.shape[0])
    if not 0 < test_split <= 0.5:
        raise InvalidInput("training_data.test_split", "test_split must be in (0, 0.5]")
    n_test = math.ceil(test_split * n)
    n_train = n - n_test
    if n_train < 1:
        raise _bad(f"the data set has {n} rows: too few to hold out a test split")
    rng = np.random.RandomState(seed % 2**32)  # scikit-learn's random_state is a RandomState
    classes, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse)
    if counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        order = rng.permutation(n)
        return order[n_test:].astype(np.int64), order[:n_test].astype(np.int64)
    by_class = np.split(np.argsort(inverse, kind="mergesort"), np.cumsum(counts)[:-1])
    train_take = _approximate_mode(counts, n_train, rng)
    test_take = _approximate_mode(counts - train_take, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for rows, k_train, k_test in zip(by_class, train_take, test_take, strict=True):
        shuffled = rows.take(rng.permutation(len(rows)), mode="clip")
        train.extend(shuffled[:k_train].tolist())
        test.extend(shuffled[k_train : k_train + k_test].tolist())
    return (
        rng.permutation(np.asarray(train, dtype=np.int64)),
        rng.permutation(np.asarray(test, dtype=np.int64)),
    )


def _approximate_mode(
    counts: NDArray[np.int64], draws: int, rng: np.random.RandomState
) -> NDArray[np.int64]:
    """Rows to draw per class: each class's share of ``draws`` rounded down, then one more for
    the classes with the largest remainders, ties broken at random (scikit-learn's
    ``_approximate_mode``, the mode of the multivariate hypergeometric, approximately)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    missing = int(draws - floored.sum())
    if missing > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add = min(len(tied), missing)
            floored[rng.choice(tied, size=add, replace=False)] += 1
            missing -= add
            if missing == 0:
                break
    result: NDArray[np.int64] = floored.astype(np.int64)
    return result


def plan_partitions(
    x: Features,
    y: Labels,
    *,
    strategy: str,
    metadata: Mapping[str, Any] | None,
    num_participants: int,
    seed: int,
    test_split: float | None,
) -> PartitionPlan:
    """Hold out the test split (when given), then partition the training rows; deterministic
    for ``seed``. Refusals name the option or the data set at fault."""
    with translated():
        options = parse_options(strategy, metadata, num_participants)
    if test_split:
        train_rows, test_rows = holdout_split(y, test_split, seed)
    else:
        train_rows, test_rows = np.arange(y.shape[0], dtype=np.int64), None
    y_train = y[train_rows]
    with translated():
        parts = partition(options, num_participants, seed, labels=y_train)
    indices = [train_rows[p] for p in parts]
    return PartitionPlan(
        participants=[(x[rows], y[rows]) for rows in indices],
        indices=indices,
        test=None if test_rows is None else (x[test_rows], y[test_rows]),
        test_indices=test_rows,
        histograms=label_histogram(y_train, parts),
        sizes=[len(rows) for rows in indices],
        options=options,
    )


# -- NPZ bytes of a partition or test split


def encode_arrays(x: NDArray[Any], y: NDArray[Any]) -> bytes:
    """NPZ bytes with ``X`` (float32) and ``y`` (int64). Entries carry a fixed date, so equal
    arrays give equal bytes (and the same content address)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in (("X", np.asarray(x, np.float32)), ("y", np.asarray(y, np.int64))):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_NPZ_DATE)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_arrays(data: bytes, *, field: str = "data") -> tuple[Features, Labels]:
    """The ``(X float32 [rows, columns], y int64)`` of :func:`encode_arrays` bytes; a 422 on
    ``field`` when they are not such a file (pickled objects are never loaded)."""
    x, y = _read_npz(data, field, "X")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise _bad("array 'y' must be one integer class id per row", field)
    labels = y.astype(np.int64)
    return _checked(x, labels, field), labels
