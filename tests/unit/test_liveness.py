"""Runner liveness (heartbeat timeout) and lease timing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from parity.core.runners.liveness import (
    default_lease_seconds,
    is_offline,
    lease_expires_at,
    offline_cutoff,
    renew_interval,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NAIVE = datetime(2026, 1, 1, 12, 0)


def test_offline_cutoff_is_now_minus_timeout() -> None:
    assert offline_cutoff(NOW, 90) == datetime(2026, 1, 1, 11, 58, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("age_seconds", "expected"),
    [
        pytest.param(0, False, id="just-heartbeated"),
        pytest.param(89.999, False, id="inside-timeout"),
        pytest.param(90, False, id="exactly-at-timeout-still-online"),
        pytest.param(90.001, True, id="just-past-timeout"),
        pytest.param(3600, True, id="an-hour-silent"),
    ],
)
def test_runner_is_offline_only_when_heartbeat_older_than_timeout(
    age_seconds: float, expected: bool
) -> None:
    last = NOW - timedelta(seconds=age_seconds)
    assert is_offline(last, NOW, 90) is expected


def test_runner_that_never_sent_a_heartbeat_is_offline() -> None:
    assert is_offline(None, NOW, 90) is True


def test_is_offline_agrees_with_offline_cutoff() -> None:
    cutoff = offline_cutoff(NOW, 30)
    for delta in (-1, 0, 1):
        last = cutoff + timedelta(seconds=delta)
        assert is_offline(last, NOW, 30) is (last < cutoff)


def test_heartbeat_in_other_timezone_compares_by_instant() -> None:
    plus_two = timezone(timedelta(hours=2))
    last = datetime(2026, 1, 1, 13, 59, 50, tzinfo=plus_two)  # 11:59:50 UTC
    assert is_offline(last, NOW, 30) is False
    assert is_offline(last, NOW, 5) is True


def test_liveness_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="now"):
        is_offline(NOW, NAIVE, 30)
    with pytest.raises(ValueError, match="last_heartbeat"):
        is_offline(NAIVE, NOW, 30)


@pytest.mark.parametrize("timeout", [0, -5])
def test_liveness_refuses_non_positive_timeout(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout_seconds"):
        offline_cutoff(NOW, timeout)


def test_lease_expires_lease_seconds_after_now() -> None:
    assert lease_expires_at(NOW, 45) == datetime(2026, 1, 1, 12, 0, 45, tzinfo=UTC)
    assert lease_expires_at(NOW, 0.5) == NOW + timedelta(milliseconds=500)


def test_lease_expiry_refuses_naive_now_and_non_positive_lease() -> None:
    with pytest.raises(ValueError, match="now"):
        lease_expires_at(NAIVE, 45)
    with pytest.raises(ValueError, match="lease_seconds"):
        lease_expires_at(NOW, 0)


@pytest.mark.parametrize(
    ("heartbeat", "configured", "expected"),
    [
        pytest.param(10, None, 30.0, id="unconfigured-is-three-heartbeats"),
        pytest.param(10, 120, 120.0, id="longer-configured-lease-kept"),
        pytest.param(10, 30, 30.0, id="configured-exactly-at-floor"),
        pytest.param(10, 15, 30.0, id="short-configured-lease-raised-to-floor"),
        pytest.param(2.5, None, 7.5, id="fractional-heartbeat"),
    ],
)
def test_default_lease_is_at_least_three_heartbeat_intervals(
    heartbeat: float, configured: float | None, expected: float
) -> None:
    assert default_lease_seconds(heartbeat, configured) == expected


def test_default_lease_refuses_non_positive_inputs() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval_seconds"):
        default_lease_seconds(0, None)
    with pytest.raises(ValueError, match="configured"):
        default_lease_seconds(10, -1)


def test_runner_renews_at_a_third_of_the_lease() -> None:
    assert renew_interval(30) == 10.0
    assert renew_interval(45) == 15.0
    assert renew_interval(1) == pytest.approx(1 / 3)


def test_renew_interval_refuses_non_positive_lease() -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        renew_interval(0)
