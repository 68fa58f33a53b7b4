"""Runner liveness and lease timing (ARCHITECTURE §4, "Lease lifecycle").

Time is always passed in (``now``); every datetime must be timezone-aware.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = [
    "LEASE_HEARTBEAT_FACTOR",
    "RENEWALS_PER_LEASE",
    "default_lease_seconds",
    "is_offline",
    "lease_expires_at",
    "offline_cutoff",
    "renew_interval",
]

LEASE_HEARTBEAT_FACTOR = 3
"""A lease lasts at least this many heartbeat intervals, so one lost heartbeat never costs it."""

RENEWALS_PER_LEASE = 3
"""Runners renew a lease this many times per lease period (at lease/3)."""


def _require_aware(name: str, value: datetime) -> None:
    """Naive datetimes are refused: stored and compared times are UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _require_positive(name: str, value: float) -> None:
    """Durations in seconds must be > 0."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def offline_cutoff(now: datetime, timeout_seconds: float) -> datetime:
    """``now - timeout_seconds``: a runner whose last heartbeat is strictly before this is
    offline (the sweep's ``WHERE last_heartbeat < cutoff``).
    """
    _require_aware("now", now)
    _require_positive("timeout_seconds", timeout_seconds)
    return now - timedelta(seconds=timeout_seconds)


def is_offline(last_heartbeat: datetime | None, now: datetime, timeout_seconds: float) -> bool:
    """True when the runner never sent a heartbeat, or its last one is strictly older than
    ``timeout_seconds`` (``last_heartbeat < now - timeout``); exactly at the timeout it is
    still online. Same rule as :func:`offline_cutoff`.
    """
    cutoff = offline_cutoff(now, timeout_seconds)
    if last_heartbeat is None:
        return True
    _require_aware("last_heartbeat", last_heartbeat)
    return last_heartbeat < cutoff


def lease_expires_at(now: datetime, lease_seconds: float) -> datetime:
    """``now + lease_seconds``: when a lease granted or renewed at ``now`` runs out."""
    _require_aware("now", now)
    _require_positive("lease_seconds", lease_seconds)
    return now + timedelta(seconds=lease_seconds)


def default_lease_seconds(heartbeat_interval_seconds: float, configured: float | None) -> float:
    """``max(configured, 3 * heartbeat_interval)``; ``3 * heartbeat_interval`` when not
    configured. A configured lease shorter than three heartbeats is raised to that floor (§4:
    default lease ≥ 3 * heartbeat interval), so a single late heartbeat never expires a lease.
    """
    _require_positive("heartbeat_interval_seconds", heartbeat_interval_seconds)
    floor = LEASE_HEARTBEAT_FACTOR * heartbeat_interval_seconds
    if configured is None:
        return float(floor)
    _require_positive("configured", configured)
    return float(max(configured, floor))


def renew_interval(lease_seconds: float) -> float:
    """``lease_seconds / 3``: how often a runner renews, leaving two renewals of slack."""
    _require_positive("lease_seconds", lease_seconds)
    return lease_seconds / RENEWALS_PER_LEASE
