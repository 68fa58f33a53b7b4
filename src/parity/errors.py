"""Domain error hierarchy. Each error carries a stable code and a category; the HTTP layer maps
categories to status codes in one table (parity.api.errors)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Category(StrEnum):
    INVALID = "invalid"  # 422: a field is wrong
    UNAUTHENTICATED = "unauthenticated"  # 401
    FORBIDDEN = "forbidden"  # 403
    NOT_FOUND = "not_found"  # 404
    CONFLICT = "conflict"  # 409
    GONE = "gone"  # 410
    TOO_LARGE = "too_large"  # 413
    UPGRADE_REQUIRED = "upgrade_required"  # 426
    RATE_LIMITED = "rate_limited"  # 429
    NOT_IMPLEMENTED = "not_implemented"  # 501
    UNAVAILABLE = "unavailable"  # 503


class ParityError(Exception):
    """Base of every error the service layer raises on purpose."""

    code: str = "error"
    category: Category = Category.INVALID
    retry_after: int | None = None

    def __init__(
        self, message: str, *, details: dict[str, Any] | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:
            self.code = code


class InvalidInput(ParityError):
    code = "invalid_input"
    category = Category.INVALID

    def __init__(self, field: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{field}: {message}", details={"field": field}, code=code)
        self.field = field


class Unauthenticated(ParityError):
    code = "unauthenticated"
    category = Category.UNAUTHENTICATED


class Forbidden(ParityError):
    code = "forbidden"
    category = Category.FORBIDDEN


class NotFound(ParityError):
    code = "not_found"
    category = Category.NOT_FOUND


class Conflict(ParityError):
    code = "conflict"
    category = Category.CONFLICT


class Unavailable(ParityError):
    code = "unavailable"
    category = Category.UNAVAILABLE
    retry_after = 2


class RateLimited(ParityError):
    code = "rate_limited"
    category = Category.RATE_LIMITED
    retry_after = 1


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the key."""
