"""The chain port: what the server and the CLI need from the token and the StakeWallet.

Two implementations pass one contract suite (tests/contract/test_chain_client.py):
:class:`parity.chain.web3_adapter.Web3ChainClient` (JSON-RPC to a node, local signing) and
:class:`parity.chain.fake.FakeChainClient` (in memory, same rules).

Conventions every implementation keeps:

* Amounts are ``int`` base units (uint256); floats never appear.
* Addresses are accepted in any case and returned lowercase ``0x`` hex.
* Transaction hashes are lowercase ``0x`` + 64 hex digits.
* Stake ids are plain strings; :func:`parity.chain.stake_ids.stake_id` computes them.
* Errors are :class:`parity.chain.errors.ChainError` (the chain said no: revert with its reason,
  insufficient funds, nonce used) or its subclass ``ChainRetryableError`` (unreachable, timeout,
  overloaded, no receipt yet). Nothing else escapes.
* Signing is local: a :class:`Signer` (an ``eth_account`` ``LocalAccount``) signs; the node never
  holds a key.

The high-level writes (``approve``, ``add_funds``, ``withdraw``, ``transfer_payment_ref``) each
send one transaction and wait for its receipt; a reverted receipt raises ``ContractReverted``. A
settlement worker that must survive restarts uses the low-level set instead: ``build_and_sign``
(with a nonce it allocated itself), ``send_raw`` (safe to repeat), ``receipt``,
``get_transaction`` and ``block_number``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

ContractName = Literal["token", "stake_wallet"]


class Signer(Protocol):
    """What signs transactions: an ``eth_account`` ``LocalAccount`` satisfies it."""

    @property
    def address(self) -> str: ...

    def sign_transaction(self, transaction_dict: dict[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class WalletInfo:
    """``StakeWallet.getWalletInfo(id)``: an id that was never funded has ``exists=False``,
    balance 0 and the zero address."""

    balance: int
    stake_id: str
    wallet: str
    exists: bool


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined transaction. ``status`` 1 = success, 0 = reverted."""

    tx_hash: str
    status: int
    block_number: int
    gas_used: int
    contract_address: str | None = None  # set when the transaction created a contract
    block_hash: str | None = None  # lowercase 0x hex; a reorg that moves the tx changes it

    @property
    def ok(self) -> bool:
        return self.status == 1


@dataclass(frozen=True, slots=True)
class Fees:
    """EIP-1559 fee caps, in the chain's native base unit (attoFIL on FEVM) per gas unit."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclass(frozen=True, slots=True)
class Call:
    """A contract function call to be signed: which of our two contracts, the function's name
    and its arguments in ABI order (ints, strings, 0x addresses, ``bytes`` for bytes32)."""

    contract: ContractName
    function: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A signed, not yet broadcast transaction. Store ``raw`` and ``tx_hash`` before sending:
    re-sending the same ``raw`` can never execute it twice."""

    tx_hash: str
    raw: bytes
    sender: str
    nonce: int
    gas: int
    fees: Fees


@dataclass(frozen=True, slots=True)
class TxInfo:
    """A transaction the node knows; ``block_number`` is None while it is pending."""

    tx_hash: str
    sender: str
    nonce: int
    to: str | None
    block_number: int | None


def approve_call(spender: str, amount: int) -> Call:
    return Call("token", "approve", (spender, amount))


def add_funds_call(amount: int, stake_id: str, wallet: str) -> Call:
    return Call("stake_wallet", "addFunds", (amount, stake_id, wallet))


def withdraw_call(stake_id: str, amount: int) -> Call:
    return Call("stake_wallet", "withdrawFunds", (stake_id, amount))


def transfer_payment_call(from_id: str, to_id: str, amount: int) -> Call:
    return Call("stake_wallet", "transferPayment", (from_id, to_id, amount))


def transfer_payment_ref_call(from_id: str, to_id: str, amount: int, ref: bytes) -> Call:
    if len(ref) != 32:
        raise ValueError(f"a payment ref is 32 bytes, got {len(ref)}")
    return Call("stake_wallet", "transferPaymentRef", (from_id, to_id, amount, ref))


class ChainClient(Protocol):
    """Token and StakeWallet access on one chain. See the module docstring for conventions."""

    kind: str  # "web3" | "fake"

    @property
    def stake_wallet_address(self) -> str:
        """The configured StakeWallet address (lowercase)."""
        ...

    # -- node and contracts ----------------------------------------------------------------

    async def chain_id(self) -> int:
        """``eth_chainId`` of the node."""
        ...

    async def block_number(self) -> int:
        """The latest block number."""
        ...

    async def genesis_hash(self) -> str:
        """The hash of block 0 (lowercase 0x hex): another one means another chain, or the same
        chain started again from scratch (a restarted dev-chain)."""
        ...

    async def code_at(self, address: str) -> bytes:
        """The runtime bytecode at ``address``; empty when no contract is there."""
        ...

    async def token_address(self) -> str:
        """The ERC20's address: the StakeWallet's ``token()``. A FILECOIN_TOKEN_ADDRESS that
        differs from it is a ChainError (staking would approve the wrong token)."""
        ...

    async def token_decimals(self) -> int:
        """The ERC20's ``decimals()`` (18 for ParityToken); cached after the first answer."""
        ...

    async def token_symbol(self) -> str:
        """The ERC20's ``symbol()`` (``PRTY`` on the dev chain), for amounts shown to people;
        cached after the first answer."""
        ...

    async def supports_payment_ref(self) -> bool:
        """Whether the StakeWallet has ``transferPaymentRef`` (ours does; the originally
        deployed one does not, and then settlement must fall back to ``transferPayment``)."""
        ...

    # -- reads -------------------------------------------------------------------------------

    async def token_balance(self, address: str) -> int:
        """ERC20 ``balanceOf(address)`` in base units."""
        ...

    async def allowance(self, owner: str, spender: str) -> int:
        """ERC20 ``allowance(owner, spender)`` in base units."""
        ...

    async def stake_of(self, stake_id: str) -> int:
        """``StakeWallet.getBalance(stake_id)``; 0 for an id never funded."""
        ...

    async def wallet_info(self, stake_id: str) -> WalletInfo:
        """``StakeWallet.getWalletInfo(stake_id)``."""
        ...

    async def stake_wallet_owner(self) -> str:
        """``StakeWallet.owner()``: the only account that may move stake between ids (the
        settlement signer must be it)."""
        ...

    async def ref_used(self, ref: bytes) -> bool:
        """``StakeWallet.refUsed(ref)``: whether a payment with this 32-byte ref was made."""
        ...

    # -- high-level writes (one transaction each, waits for the receipt) ----------------------

    async def transact(self, signer: Signer, call: Call) -> Receipt:
        """Sign ``call`` with the signer's next pending nonce, send it and wait for the receipt;
        ContractReverted when it reverts (at estimation or in the block). The writes below are
        this with their :class:`Call`."""
        ...

    async def approve(self, signer: Signer, amount: int, spender: str | None = None) -> Receipt:
        """ERC20 ``approve(spender, amount)`` from ``signer``; spender defaults to the
        StakeWallet."""
        ...

    async def add_funds(
        self, signer: Signer, stake_id: str, amount: int, wallet: str | None = None
    ) -> Receipt:
        """``addFunds(amount, stake_id, wallet)`` from ``signer`` (who must have approved the
        StakeWallet for ``amount``); ``wallet`` defaults to the signer's address."""
        ...

    async def withdraw(self, signer: Signer, stake_id: str, amount: int) -> Receipt:
        """``withdrawFunds(stake_id, amount)``; only the stake's wallet may, else
        ContractReverted."""
        ...

    async def transfer_payment_ref(
        self, signer: Signer, from_id: str, to_id: str, amount: int, ref: bytes
    ) -> Receipt:
        """``transferPaymentRef(from_id, to_id, amount, ref)`` (StakeWallet owner only): moves
        stake; a ref used before is refused with ContractReverted."""
        ...

    # -- low-level set for a settlement worker ----------------------------------------------

    async def transaction_count(self, address: str, *, pending: bool = True) -> int:
        """The next nonce of ``address`` (counting pending transactions when ``pending``)."""
        ...

    async def suggest_fees(self) -> Fees:
        """EIP-1559 caps from the latest base fee and the node's priority-fee suggestion:
        ``max_fee = 2 * base_fee + priority`` (room for the base fee to double)."""
        ...

    async def build_and_sign(
        self,
        signer: Signer,
        call: Call,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
        gas: int | None = None,
    ) -> SignedTx:
        """Encode ``call``, estimate gas (* the configured margin) unless ``gas`` is given, add
        EIP-1559 fees (``suggest_fees`` unless given) and the nonce (the node's pending count
        unless given), and sign locally. Estimation runs the call, so a call that would revert
        raises ContractReverted here, before anything is broadcast. Nothing is sent."""
        ...

    async def sign_nonce_filler(
        self, signer: Signer, *, nonce: int, fees: Fees | None = None
    ) -> SignedTx:
        """Sign, locally, a transaction that moves nothing (no value, no data, to the signer
        itself) at ``nonce``: it only uses the nonce up, so transactions of the signer waiting
        behind a nonce nothing else will fill can be mined. Nothing is sent."""
        ...

    async def send_raw(self, raw: bytes) -> str:
        """Broadcast a signed transaction and return its hash. Idempotent: re-sending one the
        node already has, or one already mined, returns the same hash. A *different*
        transaction with a used nonce raises NonceTooLow."""
        ...

    async def receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt, or None while the transaction is pending or unknown."""
        ...

    async def wait_for_receipt(self, tx_hash: str, timeout: float | None = None) -> Receipt:
        """Poll for the receipt up to ``timeout`` seconds (default FILECOIN_RECEIPT_TIMEOUT_
        SECONDS); ReceiptTimeout (retryable) when it does not come."""
        ...

    async def get_transaction(self, tx_hash: str) -> TxInfo | None:
        """The transaction as the node knows it, or None when it does not (dropped or never
        sent)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
