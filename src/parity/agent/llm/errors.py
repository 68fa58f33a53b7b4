"""The small exception hierarchy of the LLM backend clients.

Every failure of a backend call is a :class:`BackendError` with a stable ``code``, so the
executor can report it and the server can decide whether to re-route the prompt.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendRejected",
    "BackendUnavailable",
    "BadResponse",
    "ModelNotFound",
]


class BackendError(Exception):
    """A backend call failed; ``backend`` names it (``kind url``)."""

    code = "backend_error"

    def __init__(self, message: str, *, backend: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.backend = backend
        self.status = status

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}: {self.message}{status} [{self.backend}]"


class BackendUnavailable(BackendError):
    """Cannot reach the backend, it timed out, dropped the connection or answered 5xx/429."""

    code = "backend_unavailable"


class ModelNotFound(BackendError):
    """The backend does not serve the requested model."""

    code = "model_not_found"


class BadResponse(BackendError):
    """The backend answered something that is not its protocol (bad JSON, wrong shape, a
    stream that ended before the generation finished)."""

    code = "bad_backend_response"


class BackendRejected(BackendError):
    """The backend refused the request (a 4xx other than an unknown model), e.g. a prompt
    longer than the model's context."""

    code = "backend_rejected_request"
