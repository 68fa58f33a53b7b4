"""Boolean query parameters as the API's booleans everywhere: ``true`` or ``false`` (in any
case), not FastAPI's lenient "yes", "on" or 1, which a typo like ``follow=ture`` would not
reach but ``follow=1`` would, silently."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator


def true_or_false(value: object) -> object:
    """``true`` or ``false`` (any case) as a bool; anything else a validation error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("must be true or false")


# A query flag: `Annotated[Flag, Query(description=...)] = False`.
Flag = Annotated[bool, BeforeValidator(true_or_false)]
