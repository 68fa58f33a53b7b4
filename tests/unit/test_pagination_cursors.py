"""The opaque cursors of lists: each decodes what its own list encoded and refuses anything
else with a 422 naming ``cursor``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from parity.db.pagination import decode_cursor, encode_cursor
from parity.errors import InvalidInput
from parity.fl.service import (
    decode_participant_cursor,
    decode_round_cursor,
    encode_participant_cursor,
    encode_round_cursor,
)

WHEN = datetime(2026, 12, 6, 7, 30, 1, 123456, tzinfo=UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def participant_cursor() -> str:
    row = SimpleNamespace(participant_index=7, joined_at=WHEN, id=ID)
    return encode_participant_cursor(cast(Any, row))


def test_each_cursor_decodes_to_what_was_encoded() -> None:
    assert decode_cursor(encode_cursor(WHEN, ID)) == (WHEN, ID)
    assert decode_round_cursor(encode_round_cursor(41)) == 41
    assert decode_participant_cursor(participant_cursor()) == (7, WHEN, ID)
    assert decode_round_cursor(None) is None
    assert decode_participant_cursor("") is None


@pytest.mark.parametrize(
    ("decode", "value"),
    [
        (decode_round_cursor, participant_cursor()),  # another list's cursor
        (decode_participant_cursor, encode_round_cursor(3)),
        (decode_round_cursor, encode_cursor(WHEN, ID)),
        (decode_cursor, encode_round_cursor(3)),
        (decode_round_cursor, "!!not base64!!"),
        (decode_participant_cursor, "cGFydGljaXBhbnR8eHw"),  # "participant|x|"
        (decode_round_cursor, "cm91bmR8"),  # "round|": no number
        (decode_participant_cursor, "\u00e9t\u00e9"),
    ],
)
def test_a_cursor_of_another_list_or_garbage_is_refused_naming_the_field(
    decode: Any, value: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        decode(value)
    assert refused.value.field == "cursor"
    assert "not a cursor returned by this list" in str(refused.value)
