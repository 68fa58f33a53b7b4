"""The one error type of the FL core: a refused input that names the field at fault."""

from __future__ import annotations

__all__ = ["AggregationError", "FLConfigError", "ModelError", "PartitionError", "TensorError"]


class FLConfigError(ValueError):
    """Caller input is refused: ``field`` names it (a dotted path or a tensor name), ``reason``
    says why. The API layer maps it to a 422; a round-time failure becomes the round's reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class PartitionError(FLConfigError):
    """A split strategy, its options or the data set cannot give the requested partitions."""


class AggregationError(FLConfigError):
    """An aggregation method, its parameters or the updates given to it are unusable."""


class ModelError(FLConfigError):
    """A model configuration, a training configuration or a training data set is unusable."""


class TensorError(FLConfigError):
    """A model file or update is malformed; ``field`` is the tensor's name where one is at fault."""
