"""Chain errors, sorted by what a caller can do about them.

* :class:`ChainRetryableError` (503): the node was unreachable, slow, overloaded or the receipt
  did not arrive in time. Trying again later may succeed; for a write, first check whether the
  transaction already landed (``receipt``/``get_transaction``) before building a new one.
* :class:`ChainError` (409) and its other subclasses: the chain answered and said no (a revert
  with its reason, insufficient funds for gas, a nonce already used). Repeating the same call
  gives the same answer.
"""

from __future__ import annotations

from parity.errors import Category, ParityError


class ChainError(ParityError):
    """The chain refused; retrying the same request will not help."""

    code = "chain_error"
    category = Category.CONFLICT
    retryable = False


class ChainRetryableError(ChainError):
    """Transient: connection refused or reset, timeout, HTTP 429/5xx, receipt not yet seen."""

    code = "chain_unavailable"
    category = Category.UNAVAILABLE
    retryable = True
    retry_after = 5


class ReceiptTimeout(ChainRetryableError):
    """No receipt within the configured wait; the transaction may still be mined later."""

    code = "chain_receipt_timeout"

    def __init__(self, tx_hash: str, timeout_seconds: float) -> None:
        super().__init__(
            f"transaction {tx_hash} has no receipt after {timeout_seconds:g} s; it may still be "
            "mined (check it before sending another)",
            details={"tx_hash": tx_hash, "timeout_seconds": timeout_seconds},
        )
        self.tx_hash = tx_hash


class ContractReverted(ChainError):
    """A call or transaction reverted; ``reason`` is the contract's message when it gave one."""

    code = "chain_reverted"

    def __init__(self, reason: str, *, tx_hash: str | None = None) -> None:
        details: dict[str, object] = {"reason": reason}
        if tx_hash is not None:
            details["tx_hash"] = tx_hash
        super().__init__(f"reverted: {reason}", details=details)
        self.reason = reason
        self.tx_hash = tx_hash


class InsufficientFunds(ChainError):
    """The sender cannot pay for gas (or the value) of the transaction."""

    code = "chain_insufficient_funds"


class NonceTooLow(ChainError):
    """The nonce is already used: this transaction, or another with the same nonce, was mined."""

    code = "chain_nonce_too_low"
