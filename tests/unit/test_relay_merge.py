"""The wake-up relay merges what queued up while it was sending into one notification."""

from __future__ import annotations

import uuid

from parity.relay import merge


def test_queued_wake_ups_merge_into_one_notification():
    runner = str(uuid.uuid4())
    merged = merge(
        [
            {"k": "runner", "r": runner},
            {"k": "any", "n": 2},
            {"k": "events", "a": ["0xb"], "d": False},
            {"k": "any", "n": 1},
            {"k": "events", "a": ["0xa", "0xb"]},
            {"k": "pushes"},
            {"k": "runner", "r": runner},
        ],
        "me",
    )
    assert merged == {"o": "me", "r": [runner], "n": 3, "p": True, "a": ["0xa", "0xb"], "d": True}
    quiet = merge([{"k": "events", "a": ["0xa"], "d": False}], "me")
    assert quiet == {"o": "me", "a": ["0xa"]}  # no deliveries queued: delivery loops stay idle
    assert merge([{"k": "events", "a": ["0xa"]}, {"k": "events", "a": None}], "me")["a"] is None
