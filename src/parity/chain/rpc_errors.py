"""Sorting what web3/aiohttp raise into ChainRetryableError (try again later) and ChainError
(the chain said no). Kept apart from the adapter so the table is easy to read and test."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
from eth_abi.abi import decode as abi_decode
from web3 import exceptions as w3x

from parity.chain.errors import (
    ChainError,
    ChainRetryableError,
    ContractReverted,
    InsufficientFunds,
    NonceTooLow,
)

# Lowercase fragments of JSON-RPC error messages (geth, anvil, Lotus/FEVM, public gateways).
_INSUFFICIENT = ("insufficient funds", "not enough funds", "insufficient balance for transfer")
_NONCE_LOW = ("nonce too low", "nonce has already been used", "already mined", "oldnonce")
_RETRYABLE = (
    "timeout",
    "timed out",
    "rate limit",
    "too many requests",
    "try again",
    "temporarily",
    "header not found",
    "unknown block",
    "busy",
    "overloaded",
    "connection",
)
# JSON-RPC codes that mean "the node, not the request": limit exceeded, resource unavailable.
_RETRYABLE_CODES = frozenset({-32005, -32002})


def classify(
    exc: BaseException, custom_errors: Mapping[bytes, tuple[str, list[str]]]
) -> ChainError:
    """The ChainError for ``exc``. ``custom_errors`` maps a 4-byte selector to the error's name
    and argument types (from our ABIs), so OpenZeppelin's custom errors read as text."""
    if isinstance(exc, ChainError):
        return exc
    if isinstance(exc, w3x.ContractCustomError):
        return ContractReverted(_decode_custom(str(exc.data or exc.message or ""), custom_errors))
    if isinstance(exc, w3x.ContractPanicError):
        return ContractReverted(str(exc.message or exc))
    if isinstance(exc, w3x.ContractLogicError):
        reason = str(exc.message or exc).removeprefix("execution reverted: ")
        return ContractReverted(reason or "execution reverted")
    if isinstance(exc, w3x.BadFunctionCallOutput):
        return ChainError("the contract returned nothing: is it deployed at that address?")
    if isinstance(exc, w3x.TimeExhausted | w3x.RequestTimedOut | w3x.TooManyRequests):
        return ChainRetryableError(f"chain node: {exc}")
    if isinstance(exc, w3x.ProviderConnectionError):
        return ChainRetryableError(f"chain node unreachable: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):
        if exc.status == 429 or exc.status >= 500:
            return ChainRetryableError(f"chain node answered HTTP {exc.status} {exc.message}")
        return ChainError(f"chain node answered HTTP {exc.status} {exc.message}")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return ChainRetryableError("chain node did not answer in time")
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return ChainRetryableError(f"chain node unreachable: {exc}")
    if isinstance(exc, w3x.Web3RPCError):
        return _classify_rpc(exc)
    return ChainError(f"chain call failed: {type(exc).__name__}: {exc}")


def _classify_rpc(exc: w3x.Web3RPCError) -> ChainError:
    error: Any = (exc.rpc_response or {}).get("error") if exc.rpc_response else None
    message = str(error.get("message", exc)) if isinstance(error, dict) else str(exc)
    code = error.get("code") if isinstance(error, dict) else None
    low = message.lower()
    if any(s in low for s in _INSUFFICIENT):
        return InsufficientFunds(f"insufficient funds for gas: {message}")
    if any(s in low for s in _NONCE_LOW):
        return NonceTooLow(f"nonce already used: {message}")
    if "execution reverted" in low or "revert" in low:
        return ContractReverted(message.removeprefix("execution reverted: "))
    if code in _RETRYABLE_CODES or any(s in low for s in _RETRYABLE):
        return ChainRetryableError(f"chain node: {message}")
    return ChainError(f"chain node refused: {message}")


def _decode_custom(data: str, custom_errors: Mapping[bytes, tuple[str, list[str]]]) -> str:
    try:
        raw = bytes.fromhex(data.removeprefix("0x"))
    except ValueError:
        return data or "custom error"
    known = custom_errors.get(raw[:4])
    if known is None:
        return f"custom error 0x{raw[:4].hex()}"
    name, types = known
    try:
        values = abi_decode(types, raw[4:])
    except Exception:  # a malformed payload still names the error
        return name
    shown = ", ".join(_show(v) for v in values)
    return f"{name}({shown})"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)
