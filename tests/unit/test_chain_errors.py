"""RPC failures sort into retryable (try later) and not (the chain said no)."""

from __future__ import annotations

import aiohttp
import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from web3 import exceptions as w3x

from parity.chain.errors import (
    ChainError,
    ChainRetryableError,
    ContractReverted,
    InsufficientFunds,
    NonceTooLow,
)
from parity.chain.rpc_errors import classify

ERRORS = {
    keccak(text="ERC20InsufficientAllowance(address,uint256,uint256)")[:4]: (
        "ERC20InsufficientAllowance",
        ["address", "uint256", "uint256"],
    )
}


def _rpc_error(message: str, code: int = -32000) -> w3x.Web3RPCError:
    response = {"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": message}}
    return w3x.Web3RPCError(str(response["error"]), rpc_response=response)  # type: ignore[arg-type]


def _response_error(status: int) -> aiohttp.ClientResponseError:
    return aiohttp.ClientResponseError(None, (), status=status, message="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientConnectionError("refused"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        _response_error(502),
        _response_error(503),
        _response_error(429),
        w3x.TimeExhausted("no receipt"),
        w3x.TooManyRequests("slow down"),
        _rpc_error("rate limit exceeded"),
        _rpc_error("header not found"),
        _rpc_error("whatever", code=-32005),
    ],
    ids=repr,
)
def test_transient_failures_are_retryable(exc: BaseException):
    err = classify(exc, ERRORS)
    assert isinstance(err, ChainRetryableError) and err.retryable


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_response_error(400), ChainError),
        (_rpc_error("Insufficient funds for gas * price + value", -32003), InsufficientFunds),
        (_rpc_error("nonce too low", -32003), NonceTooLow),
        (_rpc_error("execution reverted: StakeWallet: no such stake", 3), ContractReverted),
        (_rpc_error("method not found", -32601), ChainError),
        (w3x.BadFunctionCallOutput("empty"), ChainError),
        (ValueError("odd"), ChainError),
    ],
    ids=repr,
)
def test_refusals_are_not_retryable(exc: BaseException, kind: type[ChainError]):
    err = classify(exc, ERRORS)
    assert type(err) is kind and not err.retryable


def test_a_revert_keeps_the_contracts_reason():
    exc = w3x.ContractLogicError("execution reverted: StakeWallet: insufficient stake", data="0x")
    err = classify(exc, ERRORS)
    assert isinstance(err, ContractReverted) and err.reason == "StakeWallet: insufficient stake"


def test_an_openzeppelin_custom_error_is_decoded_by_name():
    selector = keccak(text="ERC20InsufficientAllowance(address,uint256,uint256)")[:4]
    data = (
        "0x"
        + (selector + encode(["address", "uint256", "uint256"], ["0x" + "11" * 20, 0, 5])).hex()
    )
    err = classify(w3x.ContractCustomError(data, data=data), ERRORS)
    assert isinstance(err, ContractReverted)
    assert err.reason.startswith("ERC20InsufficientAllowance(0x")
    assert err.reason.endswith(", 0, 5)")
    unknown = classify(w3x.ContractCustomError("0xdeadbeef", data="0xdeadbeef"), ERRORS)
    assert isinstance(unknown, ContractReverted) and "0xdeadbeef" in unknown.reason


def test_chain_errors_map_to_conflict_and_retryable_ones_to_503():
    assert ChainError("x").category == "conflict"
    assert ChainRetryableError("x").category == "unavailable"
