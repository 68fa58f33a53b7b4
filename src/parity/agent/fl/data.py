"""Runner-local FL data sets (``--fl-dataset NAME=PATH``): the server never sees them, so the
runner reads and partitions them itself.

The file is read by :func:`parity.fl.datasets.load_dataset` (the reader of data sets uploaded
to the server), its format given by the suffix: ``.csv`` (a header row, the label in the last
column), ``.npz`` (arrays ``X`` and ``y``, no pickle) or ``.json``
(``{"features": [[...]], "labels": [...]}``); whole-number labels are kept, names become class
ids in sorted order. A task names the data set and how to split it, and every participant runs
the server's steps on the same file with the session's seed: the optional ``test_split``
hold-out (:func:`parity.fl.datasets.holdout_split`, left out of training), then
:func:`parity.core.fl.partitioning.partition` of the rest, keeping this participant's part. So
the partitions are disjoint exactly as they would be had the server cut them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from parity.agent.fl.config import LocalData
from parity.core.fl.errors import FLConfigError
from parity.core.fl.partitioning import partition
from parity.errors import InvalidInput
from parity.fl.datasets import holdout_split, load_dataset

__all__ = ["FORMATS", "FlDataError", "LocalDatasets", "load_local", "parse_dataset_specs"]

FORMATS = {".csv": "csv", ".npz": "npz", ".json": "json"}
MAX_DATASETS = 64
MAX_NAME_LENGTH = 100
_CACHED_PARTITIONS = 8
Arrays = tuple[NDArray[np.float32], NDArray[np.int64]]


class FlDataError(Exception):
    """A runner-local data set cannot be read or split."""


def parse_dataset_specs(values: Sequence[str], env_value: str | None = None) -> dict[str, Path]:
    """``NAME=PATH`` specs from ``--fl-dataset`` flags, else from ``PARITY_FL_DATASETS``
    (comma-separated). A refusal is a ``ValueError`` naming the flag or variable."""
    source = "--fl-dataset"
    specs = list(values)
    if not specs and env_value:
        source = "PARITY_FL_DATASETS"
        specs = [s for s in env_value.split(",") if s.strip()]
    found: dict[str, Path] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise ValueError(f"{source} {spec!r} is not NAME=PATH")
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"{source}: the name {name!r} is longer than {MAX_NAME_LENGTH}")
        if name in found:
            raise ValueError(f"{source}: the data set {name!r} is named twice")
        path = Path(raw).expanduser()
        if path.suffix.lower() not in FORMATS:
            raise ValueError(f"{source} {name}: {path} is not a .csv, .npz or .json file")
        if not path.is_file():
            raise ValueError(f"{source} {name}: no such file {path}")
        found[name] = path
    if len(found) > MAX_DATASETS:
        raise ValueError(f"{source}: at most {MAX_DATASETS} data sets")
    return found


def load_local(path: Path) -> Arrays:
    """Features as float32 ``[rows, features]`` and labels as int64 class ids."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FlDataError(f"{path}: unknown format (use .csv, .npz or .json)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FlDataError(f"cannot read {path}: {exc}") from exc
    try:
        x, y, _ = load_dataset(data, fmt, bounded=False)  # its own data: read whole
    except InvalidInput as exc:
        raise FlDataError(f"{path}: {exc.message.removeprefix(exc.field + ': ')}") from exc
    return x, y


def local_partition(x: NDArray[np.float32], y: NDArray[np.int64], data: LocalData) -> Arrays:
    """This participant's rows of a whole local data set (see the module's docstring)."""
    rows = np.arange(y.shape[0], dtype=np.int64)
    if data.test_split is not None:
        try:
            rows, _ = holdout_split(y, data.test_split, data.seed)
        except InvalidInput as exc:
            raise FlDataError(exc.message.removeprefix(exc.field + ": ")) from exc
    parts = partition(data.options, data.num_participants, data.seed, labels=y[rows])
    mine = rows[parts[data.participant_index]]
    return x[mine], y[mine]


class LocalDatasets:
    """The data sets this runner serves, by name; partitions are kept for the next round
    (they are the same every round) until the file changes."""

    def __init__(self, paths: Mapping[str, Path] | None = None) -> None:
        self.paths = dict(paths or {})
        self._lock = threading.Lock()
        self._cache: dict[tuple[Any, ...], Arrays] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self.paths)

    def partition(self, data: LocalData) -> Arrays:
        """This participant's rows of the named data set (blocking: call it off the loop)."""
        path = self.paths.get(data.name)
        if path is None:
            served = ", ".join(self.names) or "none"
            raise FlDataError(f"this runner has no data set {data.name!r} (it serves: {served})")
        try:
            stat = path.stat()
        except OSError as exc:
            raise FlDataError(f"data set {data.name!r}: cannot read {path}: {exc}") from exc
        key = (data, str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            x, y = load_local(path)
            result = local_partition(x, y, data)
        except (FlDataError, FLConfigError) as exc:
            raise FlDataError(f"data set {data.name!r}: {exc}") from exc
        with self._lock:
            if len(self._cache) >= _CACHED_PARTITIONS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = result
        return result
