"""Server-side data partitioning: which rows each FL participant trains on.

Deterministic for a seed: the same (labels, participants, strategy, options, seed) always gives
the same index arrays. Strategies (aliases in brackets):

========================  =================================================================
``iid`` [``random``]      seeded permutation cut into near-equal contiguous blocks, the first
                          ``n mod K`` one row longer. Equals Flower Datasets'
                          ``FederatedDataset(shuffle=True, seed)`` + ``IidPartitioner``.
``sequential``            the same blocks in data order (no shuffle; the seed is unused).
``stratified``            every class split as evenly as possible over all participants
                          (class counts and partition sizes differ by at most one).
``dirichlet`` [``non_iid``]  per-class Dirichlet(``alpha``) shares, ``min_samples`` enforced by
                          redrawing, optional ``self_balancing``: Flower's
                          ``DirichletPartitioner``.
``label_skew``            ``classes_per_participant`` classes each: Flower's
                          ``PathologicalPartitioner`` (``class_assignment`` ``random``,
                          ``deterministic`` or, by default, ``first-deterministic``).
``shard``                 label-sorted shards dealt at random: Flower's ``ShardPartitioner``
                          (``shards_per_participant`` and/or ``shard_size``,
                          ``keep_incomplete_shard``).
``size``                  explicit ``partition_sizes`` or relative ``size_weights`` over a seeded
                          permutation: ``FederatedDataset(shuffle=True, seed)`` +
                          ``SizePartitioner`` / ``IdToSizeFncPartitioner`` (leftovers of the
                          weighted split go to the last participant).
========================  =================================================================

Options common to all: ``min_samples`` (rows every participant must get, default 1) and
``overlap_ratio`` (0 to 1, default 0). At 0 the partitions are disjoint. A positive ratio r adds
``floor(r * |P_i|)`` rows drawn without replacement from the *other* participants' partitions to
each partition P_i, so r is the share of a partition's own size that repeats others' samples;
the disjoint base is unchanged (it comes from the seed's own stream, the extras from another).

Use :func:`parse_options` when a session is created (no data needed) and :func:`partition` when
the data is at hand; both raise :class:`PartitionError` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from parity.core.fl import partition_skew
from parity.core.fl._params import read_bool, read_float, read_int, read_list, read_mapping
from parity.core.fl.errors import PartitionError

__all__ = [
    "CLASS_ASSIGNMENTS",
    "STRATEGIES",
    "STRATEGY_ALIASES",
    "STRATEGY_OPTIONS",
    "PartitionOptions",
    "canonical_strategy",
    "label_histogram",
    "parse_options",
    "partition",
]

IndexArray = NDArray[np.int64]

STRATEGIES = ("iid", "sequential", "stratified", "dirichlet", "label_skew", "shard", "size")
STRATEGY_ALIASES = {"random": "iid", "non_iid": "dirichlet"}
CLASS_ASSIGNMENTS = ("random", "deterministic", "first-deterministic")
MAX_PARTICIPANTS = 100_000
_COMMON_OPTIONS = ("min_samples", "overlap_ratio")
MAX_ROWS = 2**31 - 1  # a row count (min_samples): what a 32-bit integer column holds
# The options each (canonical) strategy takes, the common ones included: a session-create body
# naming any other in ``training_data.metadata`` is refused (:mod:`parity.fl.spec`);
# :func:`parse_options` itself ignores them.
STRATEGY_OPTIONS: dict[str, frozenset[str]] = {
    "iid": frozenset(_COMMON_OPTIONS),
    "sequential": frozenset(_COMMON_OPTIONS),
    "stratified": frozenset(_COMMON_OPTIONS),
    "dirichlet": frozenset((*_COMMON_OPTIONS, "alpha", "self_balancing")),
    "label_skew": frozenset((*_COMMON_OPTIONS, "classes_per_participant", "class_assignment")),
    "shard": frozenset(
        (*_COMMON_OPTIONS, "shards_per_participant", "shard_size", "keep_incomplete_shard")
    ),
    "size": frozenset((*_COMMON_OPTIONS, "partition_sizes", "size_weights")),
}
_MAX_SEED = 2**63 - 1
_OVERLAP_STREAM = 0x0F1  # second seed word of the overlap draws, apart from the base stream


@dataclass(frozen=True)
class PartitionOptions:
    """A validated split strategy and its options (the strategy name is canonical)."""

    strategy: str
    min_samples: int = 1
    overlap_ratio: float = 0.0
    alpha: tuple[float, ...] = ()
    self_balancing: bool = False
    classes_per_participant: int = 0
    class_assignment: str = "first-deterministic"
    shards_per_participant: int | None = None
    shard_size: int | None = None
    keep_incomplete_shard: bool = False
    partition_sizes: tuple[int, ...] = ()
    size_weights: tuple[float, ...] = ()


def canonical_strategy(name: Any) -> str:
    """The canonical name of a split strategy, or a :class:`PartitionError` listing the valid."""
    if isinstance(name, str):
        key = name.strip().lower()
        key = STRATEGY_ALIASES.get(key, key)
        if key in STRATEGIES:
            return key
    valid = ", ".join(sorted((*STRATEGIES, *STRATEGY_ALIASES)))
    raise PartitionError("split_strategy", f"unknown split strategy {name!r}; valid: {valid}")


def parse_options(
    strategy: Any, options: Mapping[str, Any] | None, num_participants: int
) -> PartitionOptions:
    """Validate ``strategy`` and its ``options`` (the session's ``training_data.metadata``) for
    ``num_participants``. Keys a strategy does not use are ignored here (the session-create API
    refuses them, by :data:`STRATEGY_OPTIONS`)."""
    name = canonical_strategy(strategy)
    given = str(strategy).strip().lower()
    opts = read_mapping(options or {}, "metadata", PartitionError)
    read_int(
        num_participants, "num_participants", PartitionError, minimum=1, maximum=MAX_PARTICIPANTS
    )

    def required(key: str) -> Any:
        if opts.get(key) is None:
            raise PartitionError(
                key, f"{key} parameter is required for {given} partitioning strategy"
            )
        return opts[key]

    common: dict[str, Any] = {"strategy": name}
    if opts.get("min_samples") is not None:
        common["min_samples"] = read_int(
            opts.get("min_samples"), "min_samples", PartitionError, minimum=1, maximum=MAX_ROWS
        )
    if opts.get("overlap_ratio") is not None:
        common["overlap_ratio"] = read_float(
            opts.get("overlap_ratio"), "overlap_ratio", PartitionError, minimum=0.0, maximum=1.0
        )
    if name == "dirichlet":
        raw = required("alpha")
        if isinstance(raw, list | tuple):
            values = read_list(raw, "alpha", PartitionError)
            if len(values) != num_participants:
                raise PartitionError(
                    "alpha",
                    f"alpha as a list needs one value per participant "
                    f"({num_participants}), got {len(values)}",
                )
            alpha = tuple(
                read_float(v, f"alpha[{i}]", PartitionError, minimum=0.0, min_exclusive=True)
                for i, v in enumerate(values)
            )
        else:
            alpha = (read_float(raw, "alpha", PartitionError, minimum=0.0, min_exclusive=True),)
        common["alpha"] = alpha
        if opts.get("self_balancing") is not None:
            common["self_balancing"] = read_bool(
                opts.get("self_balancing"), "self_balancing", PartitionError
            )
    elif name == "label_skew":
        common["classes_per_participant"] = read_int(
            required("classes_per_participant"),
            "classes_per_participant",
            PartitionError,
            minimum=1,
        )
        mode = opts.get("class_assignment")
        if mode is not None:
            if mode not in CLASS_ASSIGNMENTS:
                raise PartitionError(
                    "class_assignment",
                    f"unknown class_assignment {mode!r}; valid: {', '.join(CLASS_ASSIGNMENTS)}",
                )
            common["class_assignment"] = mode
    elif name == "shard":
        if opts.get("shards_per_participant") is None and opts.get("shard_size") is None:
            raise PartitionError(
                "shards_per_participant",
                "shards_per_participant or shard_size "
                f"is required for {given} partitioning strategy",
            )
        if opts.get("shards_per_participant") is not None:
            common["shards_per_participant"] = read_int(
                opts.get("shards_per_participant"),
                "shards_per_participant",
                PartitionError,
                minimum=1,
            )
        if opts.get("shard_size") is not None:
            common["shard_size"] = read_int(
                opts.get("shard_size"), "shard_size", PartitionError, minimum=1
            )
        if opts.get("keep_incomplete_shard") is not None:
            common["keep_incomplete_shard"] = read_bool(
                opts.get("keep_incomplete_shard"), "keep_incomplete_shard", PartitionError
            )
    elif name == "size":
        common.update(_parse_sizes(opts, given, num_participants))
    return PartitionOptions(**common)


def _parse_sizes(opts: Mapping[str, Any], given: str, k: int) -> dict[str, Any]:
    sizes, weights = opts.get("partition_sizes"), opts.get("size_weights")
    if (sizes is None) == (weights is None):
        raise PartitionError(
            "partition_sizes",
            "exactly one of partition_sizes or size_weights "
            f"is required for {given} partitioning strategy",
        )
    key = "partition_sizes" if sizes is not None else "size_weights"
    values = read_list(sizes if sizes is not None else weights, key, PartitionError)
    if len(values) != k:
        raise PartitionError(key, f"{key} needs one value per participant ({k}), got {len(values)}")
    if key == "partition_sizes":
        return {
            key: tuple(
                read_int(v, f"{key}[{i}]", PartitionError, minimum=1) for i, v in enumerate(values)
            )
        }
    return {
        key: tuple(
            read_float(v, f"{key}[{i}]", PartitionError, minimum=0.0, min_exclusive=True)
            for i, v in enumerate(values)
        )
    }


def partition(
    options: PartitionOptions,
    num_participants: int,
    seed: int,
    *,
    labels: ArrayLike | None = None,
    num_rows: int | None = None,
) -> list[IndexArray]:
    """Row indices (int64, into the data set) for each of ``num_participants``, in participant
    order. ``labels`` (one per row) is needed by ``stratified``, ``dirichlet``, ``label_skew``
    and ``shard``; the others need only ``num_rows`` (taken from ``labels`` when given)."""
    k = read_int(
        num_participants, "num_participants", PartitionError, minimum=1, maximum=MAX_PARTICIPANTS
    )
    seed = read_int(seed, "seed", PartitionError, minimum=0, maximum=_MAX_SEED)
    label_array = None if labels is None else np.asarray(labels)
    if label_array is not None:
        if label_array.ndim != 1:
            raise PartitionError("labels", "labels must be one label per row")
        if label_array.dtype.kind == "f" and not np.isfinite(label_array).all():
            raise PartitionError("labels", "labels contain NaN or infinity")
        if num_rows is not None and num_rows != label_array.shape[0]:
            raise PartitionError("labels", f"{label_array.shape[0]} labels for {num_rows} rows")
        num_rows = label_array.shape[0]
    if num_rows is None:
        raise PartitionError("labels", "labels or num_rows is required")
    n = read_int(num_rows, "num_rows", PartitionError, minimum=0)
    for key in ("alpha", "partition_sizes", "size_weights"):
        values = getattr(options, key)
        if len(values) > 1 and len(values) != k:
            raise PartitionError(key, f"{key} has {len(values)} values for {k} participants")
    if n < options.min_samples * k:
        raise PartitionError(
            "min_samples",
            f"the data set has {n} rows, fewer than min_samples ({options.min_samples}) x "
            f"participants ({k}) = {options.min_samples * k}",
        )
    strategy = options.strategy
    if strategy in ("iid", "sequential"):
        order = np.random.default_rng(seed).permutation(n) if strategy == "iid" else np.arange(n)
        parts = _contiguous(order, _even_sizes(n, k))
    elif strategy == "size":
        parts = _contiguous(np.random.default_rng(seed).permutation(n), _sizes(options, n, k))
    else:
        if label_array is None:
            raise PartitionError("labels", f"the {strategy} strategy needs the labels")
        if strategy == "stratified":
            parts = _stratified(label_array, k, seed)
        elif strategy == "dirichlet":
            parts = partition_skew.dirichlet(
                label_array, k, options.alpha, options.min_samples, options.self_balancing, seed
            )
        elif strategy == "label_skew":
            parts = partition_skew.label_skew(
                label_array, k, options.classes_per_participant, options.class_assignment, seed
            )
        else:
            parts = partition_skew.shard(
                label_array,
                k,
                options.shards_per_participant,
                options.shard_size,
                options.keep_incomplete_shard,
                seed,
            )
    for i, part in enumerate(parts):
        if len(part) < options.min_samples:
            raise PartitionError(
                "min_samples",
                f"participant {i} would get {len(part)} rows, fewer than min_samples "
                f"({options.min_samples})",
            )
    if options.overlap_ratio > 0:
        parts = _add_overlap(parts, n, options.overlap_ratio, seed)
    return parts


def label_histogram(labels: ArrayLike, parts: Sequence[IndexArray]) -> list[dict[str, int]]:
    """Per partition, the count of each class present (keys are the labels as strings, sorted
    as the classes sort): the partition plan a session can show."""
    array = np.asarray(labels)
    result: list[dict[str, int]] = []
    for part in parts:
        classes, counts = np.unique(array[np.asarray(part, dtype=np.int64)], return_counts=True)
        result.append(
            {str(c): int(n) for c, n in zip(classes.tolist(), counts.tolist(), strict=True)}
        )
    return result


def _even_sizes(n: int, k: int) -> list[int]:
    base, extra = divmod(n, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def _contiguous(order: NDArray[np.int64], sizes: Sequence[int]) -> list[IndexArray]:
    bounds = np.cumsum([0, *sizes])
    return [order[bounds[i] : bounds[i + 1]].astype(np.int64) for i in range(len(sizes))]


def _sizes(options: PartitionOptions, n: int, k: int) -> list[int]:
    if options.partition_sizes:
        total = sum(options.partition_sizes)
        if total > n:
            raise PartitionError(
                "partition_sizes", f"partition_sizes add up to {total}; the data set has {n} rows"
            )
        return list(options.partition_sizes)
    weights = np.asarray(options.size_weights, dtype=float)
    sizes = np.array(weights / weights.sum() * n, dtype=np.int64)
    sizes[-1] += n - int(sizes.sum())
    if (sizes < 1).any():
        raise PartitionError(
            "size_weights", f"size_weights leave participant {int(np.argmin(sizes))} no rows"
        )
    return [int(s) for s in sizes]


def _stratified(labels: NDArray[np.generic], k: int, seed: int) -> list[IndexArray]:
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(k)]
    offset = 0  # who gets the next class's leftover rows: rotates so totals stay even
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        base, extra = divmod(len(rows), k)
        start = 0
        for j in range(k):
            participant = (offset + j) % k
            take = base + (1 if j < extra else 0)
            parts[participant].extend(rows[start : start + take].tolist())
            start += take
        offset = (offset + extra) % k
    for part in parts:
        rng.shuffle(part)
    return [np.asarray(p, dtype=np.int64) for p in parts]


def _add_overlap(parts: list[IndexArray], n: int, ratio: float, seed: int) -> list[IndexArray]:
    rng = np.random.default_rng([seed, _OVERLAP_STREAM])
    owner = np.full(n, -1, dtype=np.int64)
    for i, part in enumerate(parts):
        owner[part] = i
    result: list[IndexArray] = []
    for i, part in enumerate(parts):
        others = np.flatnonzero((owner >= 0) & (owner != i))
        extra = min(int(np.floor(ratio * len(part))), len(others))
        repeats = rng.choice(others, size=extra, replace=False) if extra else others[:0]
        result.append(np.concatenate([part, repeats.astype(np.int64)]))
    return result
