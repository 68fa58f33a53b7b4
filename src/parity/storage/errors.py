"""Storage errors, each with a stable code; the HTTP status comes from the category."""

from __future__ import annotations

from parity.errors import Category, Conflict, InvalidInput, NotFound, ParityError, Unavailable


class InvalidCid(InvalidInput):
    code = "invalid_cid"

    def __init__(self, value: str, reason: str) -> None:
        super().__init__("cid", f"{value[:100]!r} is not a usable CID: {reason}", code=self.code)


class ContentNotFound(NotFound):
    code = "content_not_found"


class NotAFile(InvalidInput):
    code = "not_a_file"

    def __init__(self, message: str) -> None:
        super().__init__("cid", message, code=self.code)


class PinNotFound(NotFound):
    code = "pin_not_found"


class UploadTooLarge(ParityError):
    code = "upload_too_large"
    category = Category.TOO_LARGE


class StorageQuotaExceeded(Conflict):
    code = "storage_quota_exceeded"


class MultipartInvalid(InvalidInput):
    code = "invalid_multipart"

    def __init__(self, message: str) -> None:
        super().__init__("file", message, code=self.code)


class StoreUnavailable(Unavailable):
    """The content store (a kubo node) cannot be reached or did not answer in time."""

    code = "content_store_unavailable"
    retry_after = 5


class StoreFailed(Unavailable):
    """The content store answered with an error we cannot attribute to the request."""

    code = "content_store_error"
