"""Resource fit, runner eligibility and least-loaded placement."""

from __future__ import annotations

from typing import Any

import pytest

from parity.core.tasks.placement import (
    RESOURCE_KEYS,
    Resources,
    RunnerLoad,
    choose_runner,
    fits,
    is_eligible,
    load,
    sum_resources,
)

BIG = Resources(cpu_cores=8, memory_mb=16_384, gpus=1, docker=True)
NOTHING = Resources()


def make_runner(
    runner_id: str,
    *,
    capacity: Resources = BIG,
    in_use: Resources = NOTHING,
    active_claims: int = 0,
    max_concurrent_tasks: int = 4,
    cpu_usage: float | None = None,
    labels: dict[str, str] | None = None,
) -> RunnerLoad:
    return RunnerLoad(
        runner_id=runner_id,
        capacity=capacity,
        in_use=in_use,
        active_claims=active_claims,
        max_concurrent_tasks=max_concurrent_tasks,
        cpu_usage=cpu_usage,
        labels=labels or {},
    )


# --- Resources -------------------------------------------------------------------------------


def test_resource_keys_equal_capability_keys() -> None:
    assert frozenset({"cpu_cores", "memory_mb", "gpus", "docker"}) == RESOURCE_KEYS


def test_from_mapping_reads_every_key() -> None:
    res = Resources.from_mapping({"cpu_cores": 2.5, "memory_mb": 1024, "gpus": 1, "docker": True})
    assert res == Resources(cpu_cores=2.5, memory_mb=1024, gpus=1, docker=True)


def test_from_mapping_missing_keys_default_to_zero() -> None:
    assert Resources.from_mapping({"memory_mb": 512}) == Resources(memory_mb=512)
    assert Resources.from_mapping({}) == NOTHING


def test_from_mapping_accepts_integer_cpu_cores() -> None:
    assert Resources.from_mapping({"cpu_cores": 4}).cpu_cores == 4


def test_from_mapping_refuses_unknown_key_by_name() -> None:
    with pytest.raises(ValueError, match="'cpus'"):
        Resources.from_mapping({"cpus": 2})


def test_from_mapping_skips_ignored_capability_keys() -> None:
    caps = {"cpu_cores": 4, "memory_mb": 2048, "gpus": 0, "docker": False, "fl": True}
    assert Resources.from_mapping(caps, ignore={"fl"}) == Resources(cpu_cores=4, memory_mb=2048)


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"cpu_cores": -1}, "cpu_cores"),
        ({"memory_mb": -512}, "memory_mb"),
        ({"gpus": -1}, "gpus"),
        ({"cpu_cores": float("nan")}, "cpu_cores"),
    ],
)
def test_from_mapping_refuses_negative_quantity_by_name(mapping: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Resources.from_mapping(mapping)


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"cpu_cores": "2"}, "cpu_cores"),
        ({"cpu_cores": True}, "cpu_cores"),
        ({"memory_mb": 1.5}, "memory_mb"),
        ({"gpus": False}, "gpus"),
        ({"docker": 1}, "docker"),
        ({"docker": "yes"}, "docker"),
    ],
)
def test_from_mapping_refuses_wrong_type_by_name(mapping: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Resources.from_mapping(mapping)


def test_constructor_refuses_negative_quantity() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        Resources(memory_mb=-1)


def test_sum_resources_adds_quantities_and_ors_docker() -> None:
    total = sum_resources(
        [
            Resources(cpu_cores=0.5, memory_mb=256, gpus=0),
            Resources(cpu_cores=1.5, memory_mb=768, gpus=1, docker=True),
            Resources(cpu_cores=1, memory_mb=0, gpus=1),
        ]
    )
    assert total == Resources(cpu_cores=3.0, memory_mb=1024, gpus=2, docker=True)


def test_sum_of_nothing_is_zero() -> None:
    assert sum_resources([]) == NOTHING


# --- fits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("required", "in_use", "expected"),
    [
        pytest.param(Resources(cpu_cores=8), NOTHING, True, id="exactly-all-cpu"),
        pytest.param(Resources(cpu_cores=8.5), NOTHING, False, id="more-cpu-than-capacity"),
        pytest.param(Resources(cpu_cores=4), Resources(cpu_cores=4), True, id="cpu-left-exact"),
        pytest.param(Resources(cpu_cores=4), Resources(cpu_cores=5), False, id="cpu-taken"),
        pytest.param(Resources(memory_mb=16_384), NOTHING, True, id="exactly-all-memory"),
        pytest.param(
            Resources(memory_mb=1024),
            Resources(memory_mb=15_872),
            False,
            id="memory-taken-by-claims",
        ),
        pytest.param(Resources(gpus=1), NOTHING, True, id="free-gpu"),
        pytest.param(Resources(gpus=1), Resources(gpus=1), False, id="gpu-taken"),
        pytest.param(Resources(gpus=2), NOTHING, False, id="more-gpus-than-capacity"),
        pytest.param(NOTHING, BIG, True, id="no-requirement-on-full-runner"),
    ],
)
def test_fit_is_requirement_within_capacity_minus_claims(
    required: Resources, in_use: Resources, expected: bool
) -> None:
    assert fits(required, BIG, in_use) is expected


def test_docker_task_does_not_fit_runner_without_docker() -> None:
    no_docker = Resources(cpu_cores=8, memory_mb=8192, docker=False)
    assert fits(Resources(docker=True), no_docker, NOTHING) is False
    assert fits(Resources(docker=False), no_docker, NOTHING) is True


def test_docker_is_not_consumed_by_claims() -> None:
    assert fits(Resources(docker=True), BIG, Resources(docker=True)) is True


def test_fractional_cpu_claims_do_not_fail_by_rounding() -> None:
    capacity = Resources(cpu_cores=0.3)
    in_use = sum_resources([Resources(cpu_cores=0.1), Resources(cpu_cores=0.1)])
    assert fits(Resources(cpu_cores=0.1), capacity, in_use) is True
    assert fits(Resources(cpu_cores=0.2), capacity, in_use) is False


def test_overcommitted_runner_fits_nothing_more() -> None:
    shrunk = Resources(cpu_cores=2)
    assert fits(Resources(cpu_cores=1), shrunk, Resources(cpu_cores=3)) is False


# --- eligibility and load --------------------------------------------------------------------


def test_load_is_active_claims_over_max() -> None:
    assert load(make_runner("r", active_claims=1, max_concurrent_tasks=4)) == 0.25
    assert load(make_runner("r", active_claims=0)) == 0.0
    assert load(make_runner("r", active_claims=2, max_concurrent_tasks=2)) == 1.0


def test_runner_load_refuses_zero_max_concurrent_tasks() -> None:
    with pytest.raises(ValueError, match="max_concurrent_tasks"):
        make_runner("r", max_concurrent_tasks=0)


def test_runner_load_refuses_negative_active_claims() -> None:
    with pytest.raises(ValueError, match="active_claims"):
        make_runner("r", active_claims=-1)


def test_idle_fitting_runner_is_eligible() -> None:
    assert is_eligible(Resources(cpu_cores=1), {}, make_runner("r"), ()) is True


def test_excluded_runner_is_not_eligible() -> None:
    assert is_eligible(Resources(cpu_cores=1), {}, make_runner("r"), {"r"}) is False


def test_runner_at_max_concurrent_tasks_is_not_eligible_even_with_free_resources() -> None:
    full = make_runner("r", active_claims=2, max_concurrent_tasks=2)
    assert is_eligible(NOTHING, {}, full, ()) is False


def test_runner_without_required_label_is_not_eligible() -> None:
    runner = make_runner("r", labels={"region": "eu"})
    assert is_eligible(NOTHING, {"region": "eu"}, runner, ()) is True
    assert is_eligible(NOTHING, {"region": "us"}, runner, ()) is False
    assert is_eligible(NOTHING, {"zone": "a"}, runner, ()) is False


def test_runner_with_extra_labels_is_eligible() -> None:
    runner = make_runner("r", labels={"region": "eu", "tier": "gpu"})
    assert is_eligible(NOTHING, {"tier": "gpu"}, runner, ()) is True


def test_runner_whose_claims_use_the_resources_is_not_eligible() -> None:
    runner = make_runner("r", in_use=Resources(gpus=1), active_claims=1)
    assert is_eligible(Resources(gpus=1), {}, runner, ()) is False


# --- choose_runner ---------------------------------------------------------------------------


def test_least_loaded_runner_is_chosen() -> None:
    runners = [
        make_runner("a", active_claims=2, cpu_usage=0.0),
        make_runner("b", active_claims=1, cpu_usage=0.9),
        make_runner("c", active_claims=3, cpu_usage=0.0),
    ]
    assert choose_runner(NOTHING, {}, runners, ()) == "b"


def test_load_is_relative_to_each_runners_max() -> None:
    runners = [
        make_runner("small", active_claims=1, max_concurrent_tasks=2),  # 0.5
        make_runner("large", active_claims=3, max_concurrent_tasks=10),  # 0.3
    ]
    assert choose_runner(NOTHING, {}, runners, ()) == "large"


def test_equal_load_breaks_tie_on_lower_cpu_usage() -> None:
    runners = [
        make_runner("a", active_claims=1, cpu_usage=0.7),
        make_runner("b", active_claims=1, cpu_usage=0.2),
    ]
    assert choose_runner(NOTHING, {}, runners, ()) == "b"


def test_unknown_cpu_usage_ranks_after_known() -> None:
    runners = [make_runner("a", cpu_usage=None), make_runner("b", cpu_usage=0.99)]
    assert choose_runner(NOTHING, {}, runners, ()) == "b"


def test_full_tie_breaks_on_runner_id() -> None:
    runners = [make_runner("z", cpu_usage=0.5), make_runner("m", cpu_usage=0.5)]
    assert choose_runner(NOTHING, {}, runners, ()) == "m"
    assert choose_runner(NOTHING, {}, list(reversed(runners)), ()) == "m"


def test_ineligible_runners_are_skipped_even_if_least_loaded() -> None:
    runners = [
        make_runner("idle-no-gpu", capacity=Resources(cpu_cores=8, memory_mb=8192)),
        make_runner("busy-gpu", active_claims=3, in_use=Resources(cpu_cores=3)),
    ]
    assert choose_runner(Resources(gpus=1), {}, runners, ()) == "busy-gpu"


def test_excluded_runner_is_never_chosen() -> None:
    runners = [make_runner("failed-before"), make_runner("other", active_claims=3)]
    assert choose_runner(NOTHING, {}, runners, {"failed-before"}) == "other"


def test_labels_restrict_the_choice() -> None:
    runners = [
        make_runner("eu", labels={"region": "eu"}, active_claims=3),
        make_runner("us", labels={"region": "us"}),
    ]
    assert choose_runner(NOTHING, {"region": "eu"}, runners, ()) == "eu"


def test_no_eligible_runner_gives_none() -> None:
    runners = [make_runner("a", active_claims=4), make_runner("b", capacity=Resources())]
    assert choose_runner(Resources(cpu_cores=1), {}, runners, ()) is None
    assert choose_runner(NOTHING, {}, [], ()) is None


def test_choose_runner_accepts_a_generator() -> None:
    runners = (make_runner(rid) for rid in ("b", "a"))
    assert choose_runner(NOTHING, {}, runners) == "a"
