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


class SessionTokenRequired(Forbidden):
    """An API key on a route that mints credentials: a leaked key must not be able to make
    more keys that outlive its own revocation."""

    code = "session_token_required"


class WalletTokenRequired(Forbidden):
    """A runner token on a route that spends the wallet's money or mints its credentials: the
    runner token lives on a machine that runs other people's work, so it does neither."""

    code = "wallet_token_required"


class AdminRequired(Forbidden):
    code = "admin_required"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
