"""Errors of the FL privacy layer (differential privacy, secure aggregation).

Both are :class:`~parity.core.fl.errors.FLConfigError` subclasses, so a caller that maps those to
a 422 (or to a round's failure reason) handles them without knowing this module.
"""

from __future__ import annotations

from parity.core.fl.errors import FLConfigError

__all__ = ["IncompatibleOptionsError", "SecAggError", "ShamirError"]


class IncompatibleOptionsError(FLConfigError):
    """Each option is valid alone but the combination is not (e.g. secure aggregation with a
    median): the API answers 422 with the code ``incompatible_options``."""


class SecAggError(FLConfigError):
    """A secure-aggregation round cannot go on: too few shares, a share or key that fails its
    check, a message that does not fit the round. ``field`` names the part at fault (a client id,
    ``shares``, ``masked_input``); ``reason`` is the round's failure reason."""


class ShamirError(SecAggError):
    """Secret sharing refused: fewer shares than the threshold, or shares that disagree."""
