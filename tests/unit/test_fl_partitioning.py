"""Server-side FL partitioning: disjointness, sizes, class mix, seeding, validation, and index-
for-index equality with Flower Datasets where a strategy has a Flower counterpart."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from parity.core.fl.errors import PartitionError
from parity.core.fl.partitioning import (
    STRATEGIES,
    label_histogram,
    parse_options,
    partition,
)

K = 10
LABELS = np.random.default_rng(7).integers(0, 10, size=1203)  # n not a multiple of K
N = LABELS.shape[0]

# One representative option set per strategy (every strategy, every alias once).
CASES: dict[str, dict[str, Any]] = {
    "iid": {},
    "random": {},
    "sequential": {},
    "stratified": {},
    "dirichlet": {"alpha": 0.5, "min_samples": 10},
    "non_iid": {"alpha": 0.5, "min_samples": 10, "self_balancing": True},
    "label_skew": {"classes_per_participant": 2},
    "shard": {"shards_per_participant": 2},
    "size": {"size_weights": [float(i) for i in range(1, K + 1)]},
}


def split(strategy: str, options: dict[str, Any], seed: int = 0, k: int = K) -> list[np.ndarray]:
    return partition(parse_options(strategy, options, k), k, seed, labels=LABELS)


def as_lists(parts: list[np.ndarray]) -> list[list[int]]:
    return [p.tolist() for p in parts]


@pytest.mark.parametrize("strategy", sorted(CASES))
def test_partitions_are_disjoint_valid_row_indices_at_zero_overlap(strategy: str) -> None:
    parts = split(strategy, CASES[strategy])
    assert len(parts) == K
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64
    assert len(np.unique(joined)) == len(joined), "a row is in two partitions"
    assert joined.min() >= 0 and joined.max() < N
    if strategy not in ("label_skew", "shard"):  # these two may leave rows out by design
        assert len(joined) == N


@pytest.mark.parametrize("strategy", sorted(CASES))
def test_same_seed_gives_the_same_indices(strategy: str) -> None:
    assert as_lists(split(strategy, CASES[strategy], seed=3)) == as_lists(
        split(strategy, CASES[strategy], seed=3)
    )


@pytest.mark.parametrize("strategy", sorted(set(CASES) - {"sequential"}))
def test_a_different_seed_gives_different_indices(strategy: str) -> None:
    assert as_lists(split(strategy, CASES[strategy], seed=3)) != as_lists(
        split(strategy, CASES[strategy], seed=4)
    )


def test_sequential_is_data_order_and_ignores_the_seed() -> None:
    parts = split("sequential", {}, seed=1)
    assert np.concatenate(parts).tolist() == list(range(N))
    assert as_lists(parts) == as_lists(split("sequential", {}, seed=2))


@pytest.mark.parametrize("strategy", ["iid", "sequential"])
def test_even_strategies_give_exact_sizes_first_ones_one_longer(strategy: str) -> None:
    sizes = [len(p) for p in split(strategy, {})]
    assert sizes == [121, 121, 121] + [120] * 7  # 1203 = 10 * 120 + 3


def test_stratified_spreads_every_class_and_the_total_evenly() -> None:
    parts = split("stratified", {})
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    totals = np.bincount(LABELS, minlength=10)
    for cls in range(10):
        per_participant = [int(np.bincount(LABELS[p], minlength=10)[cls]) for p in parts]
        assert max(per_participant) - min(per_participant) <= 1
        assert sum(per_participant) == totals[cls]


def test_size_partitions_have_exactly_the_given_sizes() -> None:
    sizes = [5, 100, 300, 50]
    parts = split("size", {"partition_sizes": sizes}, k=4)
    assert [len(p) for p in parts] == sizes


def test_size_weights_split_proportionally_with_leftovers_last() -> None:
    weights = [1.0, 2.0, 3.0, 4.0]
    parts = split("size", {"size_weights": weights}, k=4)
    expected = [int(w / 10.0 * N) for w in weights[:-1]]
    assert [len(p) for p in parts] == [*expected, N - sum(expected)]


def test_label_skew_gives_each_participant_exactly_its_number_of_classes() -> None:
    for c in (1, 2, 3):
        for mode in ("random", "deterministic", "first-deterministic"):
            opts = {"classes_per_participant": c, "class_assignment": mode}
            for part in split("label_skew", opts):
                assert len(np.unique(LABELS[part])) == c


def test_label_skew_first_deterministic_uses_every_class_with_enough_participants() -> None:
    parts = split("label_skew", {"classes_per_participant": 2})
    used = np.unique(np.concatenate([LABELS[p] for p in parts]))
    assert used.tolist() == list(range(10))
    for i, part in enumerate(parts):
        assert i % 10 in LABELS[part]  # participant i's first class is i mod C


def test_shard_partitions_are_whole_label_sorted_shards() -> None:
    parts = split("shard", {"shards_per_participant": 2, "shard_size": 50})
    assert [len(p) for p in parts] == [100] * K
    for part in parts:  # 2 shards of a label-sorted order: at most 2 label runs... per shard
        assert len(np.unique(LABELS[part])) <= 4


def test_dirichlet_small_alpha_skews_classes_more_than_large_alpha() -> None:
    def mean_classes_over_10_percent(alpha: float) -> float:
        parts = split("dirichlet", {"alpha": alpha, "min_samples": 1})
        counts = [sum(1 for c in range(10) if (LABELS[p] == c).sum() > 0.1 * len(p)) for p in parts]
        return float(np.mean(counts))

    assert mean_classes_over_10_percent(0.1) < mean_classes_over_10_percent(100.0)
    assert mean_classes_over_10_percent(100.0) >= 4


def test_dirichlet_honours_min_samples() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parts = split("dirichlet", {"alpha": 0.3, "min_samples": 40})
    assert min(len(p) for p in parts) >= 40


def test_dirichlet_that_cannot_meet_min_samples_fails_naming_the_field() -> None:
    with pytest.raises(PartitionError) as caught:
        split("dirichlet", {"alpha": 0.01, "min_samples": 110})
    assert caught.value.field == "min_samples"
    assert "11 attempts" in caught.value.reason


def test_dirichlet_matches_the_documented_algorithm() -> None:
    """Independent step-by-step reading of the algorithm (per sorted class: p ~ Dir(alpha),
    cut at floor(cumsum(p) * n_k)[:-1], redraw while a partition is under min, then shuffle)."""
    alpha, minimum, seed = 0.5, 10, 11
    rng = np.random.default_rng(seed)
    while True:
        reference: list[list[int]] = [[] for _ in range(K)]
        for cls in sorted(set(LABELS.tolist())):
            rows = [i for i, label in enumerate(LABELS.tolist()) if label == cls]
            shares = rng.dirichlet([alpha] * K)
            bounds = [0] + [int(c * len(rows)) for c in np.cumsum(shares)[:-1]] + [len(rows)]
            for j in range(K):
                reference[j] += rows[bounds[j] : bounds[j + 1]]
        if min(len(r) for r in reference) >= minimum:
            break
    for r in reference:
        rng.shuffle(r)
    assert as_lists(split("dirichlet", {"alpha": alpha, "min_samples": minimum}, seed)) == reference


def test_overlap_adds_repeats_of_other_partitions_and_keeps_the_disjoint_base() -> None:
    base = split("stratified", {})
    overlapped = split("stratified", {"overlap_ratio": 0.25})
    for i, (own, full) in enumerate(zip(base, overlapped, strict=True)):
        assert full[: len(own)].tolist() == own.tolist()
        extra = full[len(own) :]
        assert len(extra) == int(0.25 * len(own))
        assert len(np.unique(extra)) == len(extra)
        others = np.concatenate([p for j, p in enumerate(base) if j != i])
        assert np.isin(extra, others).all()
        assert not np.isin(extra, own).any()


def test_label_histogram_counts_each_partitions_classes() -> None:
    parts = split("label_skew", {"classes_per_participant": 1, "class_assignment": "deterministic"})
    histogram = label_histogram(LABELS, parts)
    assert histogram[3] == {"3": int((LABELS == 3).sum())}


# --- validation ------------------------------------------------------------------------------


def test_missing_alpha_for_non_iid_is_the_readme_message() -> None:
    with pytest.raises(PartitionError) as caught:
        parse_options("non_iid", {"min_samples": 10}, K)
    assert caught.value.field == "alpha"
    assert caught.value.reason == "alpha parameter is required for non_iid partitioning strategy"


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(PartitionError) as caught:
        parse_options("by_vibes", {}, K)
    assert caught.value.field == "split_strategy"
    for name in (*STRATEGIES, "random", "non_iid"):
        assert name in caught.value.reason


@pytest.mark.parametrize(
    ("strategy", "options", "field"),
    [
        ("dirichlet", {"alpha": float("nan")}, "alpha"),
        ("dirichlet", {"alpha": float("inf")}, "alpha"),
        ("dirichlet", {"alpha": 0}, "alpha"),
        ("dirichlet", {"alpha": [1.0, 2.0]}, "alpha"),
        ("dirichlet", {"alpha": 1.0, "self_balancing": "yes"}, "self_balancing"),
        ("iid", {"overlap_ratio": -0.1}, "overlap_ratio"),
        ("iid", {"overlap_ratio": 1.5}, "overlap_ratio"),
        ("iid", {"min_samples": 0}, "min_samples"),
        ("iid", {"min_samples": True}, "min_samples"),
        ("iid", {"min_samples": 2.5}, "min_samples"),
        ("label_skew", {}, "classes_per_participant"),
        ("label_skew", {"classes_per_participant": 2, "class_assignment": "x"}, "class_assignment"),
        ("shard", {}, "shards_per_participant"),
        ("shard", {"shard_size": 0}, "shard_size"),
        ("size", {}, "partition_sizes"),
        ("size", {"partition_sizes": [1, 2]}, "partition_sizes"),
        ("size", {"partition_sizes": [1] * 9 + [0]}, "partition_sizes[9]"),
        ("size", {"size_weights": [1.0] * 9 + [-1.0]}, "size_weights[9]"),
    ],
)
def test_bad_options_name_the_field(strategy: str, options: dict[str, Any], field: str) -> None:
    with pytest.raises(PartitionError) as caught:
        parse_options(strategy, options, K)
    assert caught.value.field == field


def test_too_few_rows_for_min_samples_times_participants() -> None:
    options = parse_options("iid", {"min_samples": 200}, K)
    with pytest.raises(PartitionError) as caught:
        partition(options, K, 0, num_rows=1999)
    assert caught.value.field == "min_samples"
    assert "1999 rows" in caught.value.reason and "2000" in caught.value.reason


def test_size_sum_beyond_the_data_is_refused() -> None:
    options = parse_options("size", {"partition_sizes": [1000, 1000]}, 2)
    with pytest.raises(PartitionError) as caught:
        partition(options, 2, 0, num_rows=1500)
    assert caught.value.field == "partition_sizes"


def test_label_strategies_need_labels() -> None:
    with pytest.raises(PartitionError) as caught:
        partition(parse_options("stratified", {}, K), K, 0, num_rows=N)
    assert caught.value.field == "labels"


def test_label_skew_needing_more_classes_than_exist_is_refused() -> None:
    with pytest.raises(PartitionError) as caught:
        split("label_skew", {"classes_per_participant": 11})
    assert caught.value.field == "classes_per_participant"


def test_shards_that_do_not_fit_are_refused() -> None:
    with pytest.raises(PartitionError) as caught:
        split("shard", {"shards_per_participant": 2, "shard_size": 100})
    assert caught.value.field == "shard_size"


def test_string_labels_partition_like_their_sorted_codes() -> None:
    names = np.array(["c", "a", "b"])[LABELS % 3]
    codes = np.searchsorted(np.array(["a", "b", "c"]), names)
    options = parse_options("dirichlet", {"alpha": 1.0}, 4)
    assert as_lists(partition(options, 4, 5, labels=names)) == as_lists(
        partition(options, 4, 5, labels=codes)
    )


# --- equality with Flower Datasets (needs flwr-datasets; see the module note) ----------------


@pytest.fixture(scope="module")
def flwr() -> Any:
    """flwr-datasets 0.6.1 and HF datasets. They are not in the dev extra: flwr-datasets pins
    rich<15, which the server's rich pin excludes; install with
    ``pip install datasets==4.8.5 matplotlib seaborn tqdm && pip install --no-deps
    flwr-datasets==0.6.1`` to run these."""
    partitioner = pytest.importorskip("flwr_datasets.partitioner")
    datasets = pytest.importorskip("datasets")
    return partitioner, datasets


FLWR_LABELS = LABELS[:600]


def flower_indices(flwr: Any, make: Any, shuffled_with: int | None = None) -> list[list[int]]:
    partitioner_mod, datasets = flwr
    dataset = datasets.Dataset.from_dict(
        {"label": FLWR_LABELS.tolist(), "row": list(range(len(FLWR_LABELS)))}
    )
    if shuffled_with is not None:  # what FederatedDataset(shuffle=True, seed) does first
        dataset = dataset.shuffle(seed=shuffled_with)
    partitioner = make(partitioner_mod)
    partitioner.dataset = dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [partitioner.load_partition(i)["row"] for i in range(partitioner.num_partitions)]


def ours(strategy: str, options: dict[str, Any], k: int, seed: int) -> list[list[int]]:
    return as_lists(partition(parse_options(strategy, options, k), k, seed, labels=FLWR_LABELS))


@pytest.mark.parametrize("seed", [0, 42])
@pytest.mark.parametrize(("alpha", "balancing"), [(0.1, False), (0.5, True), (1.0, False)])
def test_dirichlet_equals_flower(flwr: Any, seed: int, alpha: float, balancing: bool) -> None:
    expected = flower_indices(
        flwr,
        lambda m: m.DirichletPartitioner(
            K, "label", alpha, min_partition_size=5, self_balancing=balancing, seed=seed
        ),
    )
    options = {"alpha": alpha, "min_samples": 5, "self_balancing": balancing}
    assert ours("dirichlet", options, K, seed) == expected


@pytest.mark.parametrize("mode", ["random", "deterministic", "first-deterministic"])
@pytest.mark.parametrize("classes", [1, 3])
def test_label_skew_equals_flower_pathological(flwr: Any, mode: str, classes: int) -> None:
    expected = flower_indices(
        flwr,
        lambda m: m.PathologicalPartitioner(
            K, "label", classes, class_assignment_mode=mode, seed=9
        ),
    )
    options = {"classes_per_participant": classes, "class_assignment": mode}
    assert ours("label_skew", options, K, 9) == expected


@pytest.mark.parametrize(
    ("flower_kwargs", "options"),
    [
        ({"num_shards_per_partition": 2}, {"shards_per_participant": 2}),
        (
            {"num_shards_per_partition": 3, "shard_size": 20},
            {"shards_per_participant": 3, "shard_size": 20},
        ),
        ({"shard_size": 50}, {"shard_size": 50}),
        (
            {"shard_size": 41, "keep_incomplete_shard": True},
            {"shard_size": 41, "keep_incomplete_shard": True},
        ),
    ],
)
def test_shard_equals_flower(
    flwr: Any, flower_kwargs: dict[str, Any], options: dict[str, Any]
) -> None:
    expected = flower_indices(
        flwr, lambda m: m.ShardPartitioner(9, "label", seed=5, **flower_kwargs)
    )
    assert ours("shard", options, 9, 5) == expected


def test_iid_equals_flower_federated_dataset_shuffle_then_iid(flwr: Any) -> None:
    expected = flower_indices(flwr, lambda m: m.IidPartitioner(7), shuffled_with=13)
    assert ours("iid", {}, 7, 13) == expected


def test_size_equals_flower_size_and_linear_partitioners(flwr: Any) -> None:
    sizes = [50, 120, 300, 7]
    expected = flower_indices(flwr, lambda m: m.SizePartitioner(sizes), shuffled_with=2)
    assert ours("size", {"partition_sizes": sizes}, 4, 2) == expected
    expected = flower_indices(flwr, lambda m: m.LinearPartitioner(6), shuffled_with=2)
    assert ours("size", {"size_weights": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}, 6, 2) == expected


def test_nan_labels_are_refused_rather_than_silently_dropped() -> None:
    labels = LABELS.astype(float)
    labels[5] = np.nan
    with pytest.raises(PartitionError) as caught:
        partition(parse_options("dirichlet", {"alpha": 1.0}, K), K, 0, labels=labels)
    assert caught.value.field == "labels"


def test_metadata_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(PartitionError) as caught:
        parse_options("iid", ["alpha", 1], K)  # type: ignore[arg-type]
    assert caught.value.field == "metadata"


def test_per_participant_lists_must_match_the_participants_partitioned_for() -> None:
    options = parse_options("size", {"partition_sizes": [10, 20, 30]}, 3)
    with pytest.raises(PartitionError) as caught:
        partition(options, 4, 0, num_rows=100)
    assert caught.value.field == "partition_sizes"
