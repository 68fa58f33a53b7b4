from __future__ import annotations

from parity.errors import NotFound


class PromptNotFound(NotFound):
    code = "prompt_not_found"


class ModelNotServed(NotFound):
    """A submit that must be served now (the gateways') names a model no claiming runner
    reports."""

    code = "model_not_found"
