"""What an accepted update counts for: its example count, which sets its FedAvg weight, the
round's weighted metrics and its share of the round's reward.

A participant reports ``data_size`` with every update; the count is that figure, bounded by
what the server knows:

- data the server partitioned: the partition's rows (the participant's ``num_examples``);
- a ``training_data.runner_dataset``: the server never sees the data, so the count is the
  runner's own word. Its first accepted update fixes the participant's count (stored as the
  participant's ``num_examples``) and a later round counts at most that figure, so a
  participant cannot grow its weight once the session is under way; and
  ``training_data.max_samples_per_participant``, when set, caps every count.

A report above the bound is counted at the bound rather than refused: the server can correct
the figure itself, and a refusal would drop the participant from the round (failing it where
every participant must report) over a number that no longer matters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cap_of", "counted_examples", "fixes_first_count"]


def cap_of(training_data: Mapping[str, Any] | None) -> int | None:
    """The session's ``max_samples_per_participant`` (None: no cap)."""
    value = (training_data or {}).get("max_samples_per_participant")
    return None if value is None else int(value)


def counted_examples(reported: int, known: int | None, cap: int | None) -> int:
    """``reported``, at most ``known`` (the partition's rows, or the count a runner-local
    participant's first accepted update fixed) and at most ``cap``."""
    count = reported
    if known:
        count = min(count, known)
    if cap is not None:
        count = min(count, cap)
    return count


def fixes_first_count(training_data: Mapping[str, Any] | None, known: int | None) -> bool:
    """Whether an accepted update fixes its participant's count: runner-local data, and no
    count fixed yet."""
    return known is None and bool((training_data or {}).get("runner_dataset"))
