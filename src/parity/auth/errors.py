from __future__ import annotations

from parity.errors import Forbidden, InvalidInput, NotFound, Unauthenticated


class InvalidAddress(InvalidInput):
    code = "invalid_address"


class InvalidSignature(Unauthenticated):
    code = "invalid_signature"


class NonceInvalid(Unauthenticated):
    code = "nonce_invalid"


class TokenInvalid(Unauthenticated):
    code = "token_invalid"


class AdminRequired(Forbidden):
    code = "admin_required"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
