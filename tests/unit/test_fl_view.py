"""What `parity-server fl status` prints of a session's end: the API's ``completed_at`` is
when the session ended, whichever way, and the line is named by how it ended."""

from __future__ import annotations

from typing import Any

import pytest

from parity.cli.fl_view import session_lines

ENDED = "2026-12-06T10:47:22Z"


def session(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "s1",
        "name": "digits",
        "status": status,
        "current_round": 2,
        "total_rounds": 5,
        "participant_count": 3,
        "min_participants": 3,
        "max_participants": 3,
        "model_type": "neural_network",
        "created_at": "2026-12-06T10:40:00Z",
        "started_at": "2026-12-06T10:41:00Z",
        **extra,
    }


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_the_end_of_a_session_is_named_by_how_it_ended(status: str) -> None:
    lines = session_lines(session(status, completed_at=ENDED))
    ended = [line for line in lines if line.endswith(ENDED)]
    assert ended == [f"{status:<13} {ENDED}"]
    others = {"completed", "failed", "cancelled"} - {status}
    assert not any(line.startswith(tuple(others)) for line in lines)


def test_a_session_still_running_shows_no_end() -> None:
    lines = session_lines(session("active", completed_at=None))
    assert [line.split()[0] for line in lines[-2:]] == ["created", "started"]
