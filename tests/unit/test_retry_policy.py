"""The retry policy: exponential backoff with injected jitter, and the retry decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from parity.core.tasks.retry import RetryDecision, RetryPolicy
from parity.core.tasks.states import TaskStatus

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NO_JITTER = 0.5  # rand = 0.5 puts the jitter factor at exactly 1


@pytest.fixture
def policy() -> RetryPolicy:
    return RetryPolicy()


def test_default_policy_values(policy: RetryPolicy) -> None:
    assert (
        policy.max_attempts,
        policy.base_delay_seconds,
        policy.max_delay_seconds,
        policy.multiplier,
        policy.jitter,
    ) == (3, 5.0, 300.0, 2.0, 0.1)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (6, 160.0), (7, 300.0), (50, 300.0)],
)
def test_backoff_doubles_per_attempt_until_capped(
    policy: RetryPolicy, attempt: int, expected: float
) -> None:
    assert policy.backoff_seconds(attempt, NO_JITTER) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("rand", "expected"),
    [(0.0, 9.0), (0.25, 9.5), (0.5, 10.0), (0.75, 10.5), (0.999999, 10.999998)],
)
def test_backoff_jitter_spans_plus_minus_fraction(
    policy: RetryPolicy, rand: float, expected: float
) -> None:
    assert policy.backoff_seconds(2, rand) == pytest.approx(expected)


def test_backoff_is_deterministic_for_the_same_rand(policy: RetryPolicy) -> None:
    assert policy.backoff_seconds(3, 0.123) == policy.backoff_seconds(3, 0.123)


def test_backoff_jitter_applies_after_the_cap(policy: RetryPolicy) -> None:
    assert policy.backoff_seconds(20, 0.0) == pytest.approx(270.0)
    assert policy.backoff_seconds(20, 0.75) == pytest.approx(315.0)


def test_backoff_without_jitter_ignores_rand() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert policy.backoff_seconds(1, 0.0) == policy.backoff_seconds(1, 0.9) == 5.0


def test_backoff_survives_huge_attempt_numbers(policy: RetryPolicy) -> None:
    assert policy.backoff_seconds(100_000, NO_JITTER) == pytest.approx(300.0)


def test_backoff_with_zero_base_is_zero_even_for_huge_attempts() -> None:
    policy = RetryPolicy(base_delay_seconds=0.0)
    assert policy.backoff_seconds(100_000, 0.9) == 0.0


def test_backoff_with_multiplier_one_is_constant() -> None:
    policy = RetryPolicy(multiplier=1.0, jitter=0.0)
    assert [policy.backoff_seconds(a, 0.0) for a in (1, 2, 10)] == [5.0, 5.0, 5.0]


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_refuses_attempt_below_one(policy: RetryPolicy, attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        policy.backoff_seconds(attempt, 0.5)


@pytest.mark.parametrize("rand", [-0.01, 1.0, 1.5])
def test_backoff_refuses_rand_outside_unit_interval(policy: RetryPolicy, rand: float) -> None:
    with pytest.raises(ValueError, match="rand"):
        policy.backoff_seconds(1, rand)


@pytest.mark.parametrize(
    ("attempts_made", "max_attempts", "expected"),
    [(0, 1, True), (1, 1, False), (1, 3, True), (2, 3, True), (3, 3, False), (4, 3, False)],
)
def test_should_retry_only_while_attempts_are_left(
    policy: RetryPolicy, attempts_made: int, max_attempts: int, expected: bool
) -> None:
    assert policy.should_retry(attempts_made, max_attempts) is expected


def test_should_retry_uses_policy_default_when_task_sets_none() -> None:
    policy = RetryPolicy(max_attempts=2)
    assert policy.should_retry(1, None) is True
    assert policy.should_retry(2, None) is False


def test_should_retry_refuses_max_attempts_below_one(policy: RetryPolicy) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        policy.should_retry(0, 0)


def test_should_retry_refuses_negative_attempts_made(policy: RetryPolicy) -> None:
    with pytest.raises(ValueError, match="attempts_made"):
        policy.should_retry(-1, 3)


def test_failure_with_attempts_left_goes_back_to_pending_after_backoff(
    policy: RetryPolicy,
) -> None:
    decision = policy.decide_after_failure(1, 3, NOW, NO_JITTER)
    assert decision == RetryDecision(
        retry=True,
        available_at=NOW + timedelta(seconds=5),
        final_status=TaskStatus.PENDING,
    )


def test_second_failure_waits_twice_as_long(policy: RetryPolicy) -> None:
    decision = policy.decide_after_failure(2, 3, NOW, NO_JITTER)
    assert decision.available_at == NOW + timedelta(seconds=10)


def test_failure_of_last_attempt_is_final(policy: RetryPolicy) -> None:
    decision = policy.decide_after_failure(3, 3, NOW, 0.3)
    assert decision == RetryDecision(retry=False, available_at=None, final_status=TaskStatus.FAILED)


def test_single_attempt_task_fails_on_first_failure(policy: RetryPolicy) -> None:
    decision = policy.decide_after_failure(1, 1, NOW, 0.3)
    assert decision.retry is False
    assert decision.final_status is TaskStatus.FAILED


def test_decision_uses_jitter_from_rand(policy: RetryPolicy) -> None:
    decision = policy.decide_after_failure(1, 3, NOW, 0.0)
    assert decision.available_at == NOW + timedelta(seconds=4.5)


def test_decision_keeps_utc_timezone(policy: RetryPolicy) -> None:
    decision = policy.decide_after_failure(1, 3, NOW, NO_JITTER)
    assert decision.available_at is not None
    assert decision.available_at.tzinfo is UTC


def test_decision_refuses_naive_now(policy: RetryPolicy) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        policy.decide_after_failure(1, 3, datetime(2026, 1, 1, 12, 0), NO_JITTER)


def test_decision_refuses_bad_rand_even_when_final(policy: RetryPolicy) -> None:
    with pytest.raises(ValueError, match="rand"):
        policy.decide_after_failure(3, 3, NOW, 2.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -2}, "max_attempts"),
        ({"base_delay_seconds": -1.0}, "base_delay_seconds"),
        ({"max_delay_seconds": -0.5}, "max_delay_seconds"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_policy_refuses_invalid_settings_naming_the_field(
    kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_immutable(policy: RetryPolicy) -> None:
    with pytest.raises(AttributeError):
        policy.max_attempts = 5  # type: ignore[misc]
