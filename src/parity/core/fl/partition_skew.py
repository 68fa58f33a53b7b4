"""Label-skewed partitioners: Dirichlet, pathological (label skew) and shards.

Each reproduces a Flower Datasets (flwr-datasets 0.6) partitioner index for index, in the same
order, for the same seed, when that partitioner is applied directly to the data set (no
``FederatedDataset`` pre-shuffle): the random draws are made in the same order from the same
``numpy.random.default_rng(seed)`` stream. Classes are always taken in sorted order.

These functions assume validated options (see :func:`parity.core.fl.partitioning.parse_options`)
and raise :class:`PartitionError` only for what depends on the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from parity.core.fl.errors import PartitionError

__all__ = ["DIRICHLET_MAX_RETRIES", "dirichlet", "label_skew", "shard"]

IndexArray = NDArray[np.int64]

# Flower's DirichletPartitioner gives up after 10 resamplings (11 draws in all).
DIRICHLET_MAX_RETRIES = 10


def dirichlet(
    labels: NDArray[np.generic],
    num_participants: int,
    alpha: Sequence[float],
    min_samples: int,
    self_balancing: bool,
    seed: int,
) -> list[IndexArray]:
    """Per-class Dirichlet split (Hsu et al. 2019, as Flower's ``DirichletPartitioner``).

    For each class k (sorted): p ~ Dir(alpha) over the participants; with ``self_balancing``
    a participant already holding more than n / K rows gets p_i = 0 and p is renormalised. The
    class's rows (in data order) are cut at ``floor(cumsum(p) * n_k)[:-1]``; rounding leftovers
    fall to the last participant. If the smallest partition has fewer than ``min_samples`` rows,
    everything is drawn again (the generator continues), at most ``DIRICHLET_MAX_RETRIES``
    times. Finally each partition is shuffled with the same generator.
    """
    rng = np.random.default_rng(seed)
    concentration = np.asarray(
        list(alpha) * num_participants if len(alpha) == 1 else list(alpha), dtype=float
    )
    classes = np.unique(labels)
    class_rows = [np.flatnonzero(labels == k) for k in classes]
    average = labels.shape[0] / num_participants
    for attempt in range(DIRICHLET_MAX_RETRIES + 1):
        parts: list[list[int]] = [[] for _ in range(num_participants)]
        for rows in class_rows:
            proportions = rng.dirichlet(concentration)
            if self_balancing:
                full = np.array([len(p) > average for p in parts])
                proportions = np.where(full, 0.0, proportions)
                # A plain left-to-right sum, as the reference computes it: a pairwise numpy sum
                # can differ in the last bit and move a cut point.
                total = sum(proportions.tolist())
                if total > 0:
                    proportions = proportions / total
                else:  # every open participant drew 0: share the class evenly among them
                    proportions = np.where(full, 0.0, 1.0) / max(1, int((~full).sum()))
            cuts = (np.cumsum(proportions) * len(rows)).astype(int)[:-1]
            for participant, chunk in enumerate(np.split(rows, cuts)):
                parts[participant].extend(chunk.tolist())
        smallest = min(len(p) for p in parts)
        if smallest >= min_samples:
            break
        if attempt == DIRICHLET_MAX_RETRIES:
            raise PartitionError(
                "min_samples",
                f"no Dirichlet draw gave every participant at least {min_samples} rows in "
                f"{DIRICHLET_MAX_RETRIES + 1} attempts (smallest: {smallest}); "
                "lower min_samples or raise alpha",
            )
    for part in parts:
        rng.shuffle(part)
    return [np.asarray(p, dtype=np.int64) for p in parts]


def label_skew(
    labels: NDArray[np.generic],
    num_participants: int,
    classes_per_participant: int,
    class_assignment: str,
    seed: int,
) -> list[IndexArray]:
    """Each participant gets exactly ``classes_per_participant`` distinct classes (Flower's
    ``PathologicalPartitioner``; McMahan et al. 2017's pathological non-IID).

    Class choice, with classes sorted: ``random`` draws them without replacement;
    ``deterministic`` gives participant i the classes ``(i + j) mod C``; ``first-deterministic``
    gives class ``i mod C`` first and draws the rest at random without repeats (NIID-Bench's
    "#C=k", and every class is used when there are at least C participants). A class used by m
    participants is cut into m near-equal contiguous chunks handed out in participant order; a
    class nobody drew is left out. Each partition is then shuffled.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    num_classes = len(classes)
    if classes_per_participant > num_classes:
        raise PartitionError(
            "classes_per_participant",
            f"classes_per_participant ({classes_per_participant}) exceeds the number of "
            f"classes in the data set ({num_classes})",
        )
    chosen: list[list[int]] = []  # per participant, positions into ``classes``
    for participant in range(num_participants):
        if class_assignment == "deterministic":
            picks = [(participant + j) % num_classes for j in range(classes_per_participant)]
        elif class_assignment == "random":
            drawn = rng.choice(classes, size=classes_per_participant, replace=False)
            picks = [int(np.searchsorted(classes, c)) for c in drawn]
        else:  # first-deterministic
            picks = [participant % num_classes]
            while len(picks) < classes_per_participant:
                candidate = int(np.searchsorted(classes, rng.choice(classes, size=1)[0]))
                if candidate not in picks:
                    picks.append(candidate)
        chosen.append(picks)
    users = [0] * num_classes
    for picks in chosen:
        for position in picks:
            users[position] += 1
    class_rows = [np.flatnonzero(labels == c) for c in classes]
    for position, count in enumerate(users):
        if count > len(class_rows[position]):
            raise PartitionError(
                "classes_per_participant",
                f"class {classes[position]!r} has {len(class_rows[position])} rows but "
                f"{count} participants need it",
            )
    parts: list[list[int]] = [[] for _ in range(num_participants)]
    for position in range(num_classes):
        if users[position] == 0:
            continue
        chunks = np.array_split(class_rows[position], users[position])
        handed = 0
        for participant in range(num_participants):
            if position in chosen[participant]:
                parts[participant].extend(chunks[handed].tolist())
                handed += 1
    for part in parts:
        rng.shuffle(part)
    return [np.asarray(p, dtype=np.int64) for p in parts]


def shard(
    labels: NDArray[np.generic],
    num_participants: int,
    shards_per_participant: int | None,
    shard_size: int | None,
    keep_incomplete_shard: bool,
    seed: int,
) -> list[IndexArray]:
    """Sort by label, cut into consecutive shards, deal a random permutation of shard ids
    (Flower's ``ShardPartitioner``; McMahan et al. 2017's 2-shards-per-client MNIST split).

    - ``shards_per_participant`` (optionally with ``shard_size``; if absent
      ``shard_size = floor(n / (K * shards_per_participant))``): every participant gets that
      many shards;
    - ``shard_size`` alone: ``floor(n / shard_size)`` full shards (``ceil`` with
      ``keep_incomplete_shard``, the last one short) spread as evenly as possible, the first
      participants getting one more.
    The sort is stable, so ties keep data order; the result indexes the original rows.
    """
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    order = np.argsort(labels, kind="stable")
    if shards_per_participant is not None:
        if shard_size is not None and shard_size * shards_per_participant * num_participants > n:
            raise PartitionError(
                "shard_size",
                f"{num_participants} participants x {shards_per_participant} shards x "
                f"{shard_size} rows need {shard_size * shards_per_participant * num_participants}"
                f" rows; the data set has {n}",
            )
        used = num_participants * shards_per_participant
        counts = [shards_per_participant] * num_participants
        if shard_size is None:
            shard_size = n // used
            if shard_size == 0:
                usable = 0
            elif keep_incomplete_shard:
                usable = math.ceil(n / shard_size)
            else:
                usable = n // shard_size
        else:
            usable = n // shard_size
    else:
        assert shard_size is not None  # parse_options requires one of the two
        used = math.ceil(n / shard_size) if keep_incomplete_shard else n // shard_size
        usable = used
        base, extra = divmod(used, num_participants)
        counts = [base + (1 if i < extra else 0) for i in range(num_participants)]
    if usable < num_participants:
        raise PartitionError(
            "shard_size",
            f"only {usable} shards fit in {n} rows, fewer than the {num_participants} "
            "participants; use smaller or fewer shards",
        )
    shard_ids = rng.permutation(usable)[:used]
    dealt = np.split(shard_ids, np.cumsum(counts, dtype=int))[:-1]
    parts: list[list[int]] = []
    for ids in dealt:
        rows: list[int] = []
        for shard_id in ids.tolist():
            start = shard_id * shard_size
            rows.extend(range(start, min(start + shard_size, n)))
        parts.append(rows)
    for part in parts:
        rng.shuffle(part)
    return [order[np.asarray(p, dtype=np.int64)].astype(np.int64) for p in parts]
