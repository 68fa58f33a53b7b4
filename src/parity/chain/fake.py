"""An in-memory chain with the token's and the StakeWallet's rules, for unit tests.

It keeps the same semantics the contract suite checks on anvil: approve/transferFrom
allowances, stakes bound to their wallet (an address id only to its own address), owner-only
payments, a reused payment ref refused, nonces, idempotent re-broadcast, and reverts found at
estimation. ``FakeChain`` is the chain (share one between several clients);
``FakeChainClient`` is the port over it. Knobs for tests: ``unreachable`` (every call raises
ChainRetryableError), ``automine`` (off: transactions wait for :meth:`FakeChain.mine`),
``payment_ref`` (off: behaves like the originally deployed StakeWallet), :meth:`remove_code`,
:meth:`FakeChain.drop` (a pending transaction leaves the mempool), :meth:`FakeChain.reorg`
(the last blocks are undone) and :meth:`FakeChain.reset` (a restarted node that kept nothing).
As on an EVM chain, a transaction to an address without code is mined as a success that does
nothing.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eth_utils.crypto import keccak

from parity.chain.base import TransactingClient
from parity.chain.errors import (
    ChainError,
    ChainRetryableError,
    ContractReverted,
    NonceTooLow,
    ReceiptTimeout,
)
from parity.chain.ports import (
    Call,
    ChainClient,
    Fees,
    Receipt,
    SignedTx,
    Signer,
    TxInfo,
    WalletInfo,
)

ZERO = "0x" + "00" * 20
FAKE_GAS = 100_000
FAKE_CODE = bytes.fromhex("6080604052")  # anything non-empty


def _addr(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 42 or not value.lower().startswith("0x"):
        raise ChainError(f"not a 0x address: {value!r}")
    try:
        int(value[2:], 16)
    except ValueError:
        raise ChainError(f"not a 0x address: {value!r}") from None
    return value.lower()


def _is_address_id(stake_id: str) -> bool:
    body = stake_id[2:]
    return (
        len(stake_id) == 42
        and stake_id.startswith("0x")
        and all(c in "0123456789abcdef" for c in body)
    )


def _amount(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**256:
        raise ChainError(f"not a uint256: {value!r}")
    return value


@dataclass
class _Stake:
    balance: int
    stake_id: str
    wallet: str


@dataclass
class _State:
    balances: dict[str, int] = field(default_factory=dict)
    allowances: dict[tuple[str, str], int] = field(default_factory=dict)
    stakes: dict[str, _Stake] = field(default_factory=dict)
    used_refs: set[bytes] = field(default_factory=set)
    total_staked: int = 0


@dataclass
class _Tx:
    tx_hash: str
    sender: str
    nonce: int
    call: Call | None  # None: a nonce filler, which moves nothing
    block_number: int | None = None


def _revert(reason: str) -> ContractReverted:
    return ContractReverted(reason)


class FakeChain:
    """The chain state; see the module docstring."""

    def __init__(
        self,
        *,
        chain_id: int = 314159,
        decimals: int = 18,
        symbol: str = "PRTY",
        owner: str = "0x" + "0a" * 20,
        token_address: str = "0x" + "70" * 20,
        stake_wallet_address: str = "0x" + "5a" * 20,
        payment_ref: bool = True,
        automine: bool = True,
        base_fee: int = 100,
        priority_fee: int = 1,
    ) -> None:
        self.chain_id = chain_id
        self.decimals = decimals
        self.symbol = symbol
        self.owner = _addr(owner)
        self.token_address = _addr(token_address)
        self.stake_wallet_address = _addr(stake_wallet_address)
        self.payment_ref = payment_ref
        self.automine = automine
        self.base_fee = base_fee
        self.priority_fee = priority_fee
        self.unreachable = False
        self.block = 1
        self.code: dict[str, bytes] = {
            self.token_address: FAKE_CODE,
            self.stake_wallet_address: FAKE_CODE,
        }
        self.state = _State()
        self.nonces: dict[str, int] = {}
        self.txs: dict[str, _Tx] = {}
        self.receipts: dict[str, Receipt] = {}
        self.pending: dict[tuple[str, int], _Tx] = {}
        # For reorg(): the state after each block, and how often each height was replaced.
        self.snapshots: dict[int, _State] = {self.block: _State()}
        self.forks: dict[int, int] = {}
        self.resets = 0  # reset() changes every block's hash

    # -- test knobs ------------------------------------------------------------------------------

    def mint(self, to: str, amount: int) -> None:
        """Credit tokens directly (what the token owner's mint does), without a transaction."""
        self._mint(_addr(to), _amount(amount))
        self.snapshots[self.block] = copy.deepcopy(self.state)

    def block_hash(self, number: int) -> str:
        """The hash of block ``number``; :meth:`reorg` changes it for the blocks it replaces."""
        fork = f"{number}:{self.forks.get(number, 0)}:{self.resets}"
        return "0x" + keccak(f"fake-block:{fork}".encode()).hex()

    def reorg(self, depth: int) -> None:
        """Undo the last ``depth`` blocks: their transactions leave the chain (as after
        anvil's ``evm_revert``: gone from the node, not back in the mempool) and the state is
        rebuilt by re-running the remaining blocks. Tests re-broadcast what should come back."""
        cut = self.block - depth
        for tx_hash, r in list(self.receipts.items()):
            if r.block_number > cut:
                del self.receipts[tx_hash]
                tx = self.txs.pop(tx_hash)
                self.nonces[tx.sender] = min(self.nonces.get(tx.sender, 0), tx.nonce)
        for number in range(cut + 1, self.block + 1):
            self.forks[number] = self.forks.get(number, 0) + 1
        self.block = cut
        self.state = copy.deepcopy(self.snapshots.get(cut, _State()))

    def advance(self, blocks: int = 1) -> None:
        """Mine ``blocks`` empty blocks."""
        for _ in range(blocks):
            self.block += 1
            self.snapshots[self.block] = copy.deepcopy(self.state)

    def drop(self, tx_hash: str) -> None:
        """Forget a pending transaction (``anvil_dropTransaction``)."""
        tx = self.txs.pop(tx_hash.lower(), None)
        if tx is not None and tx.block_number is None:
            self.pending.pop((tx.sender, tx.nonce), None)

    def remove_code(self, address: str) -> None:
        self.code.pop(_addr(address), None)

    def reset(self, *, redeploy: bool = False) -> None:
        """The node restarted with nothing kept (a restarted anvil): no blocks, no
        transactions, nonces, balances or stakes, and (unless ``redeploy``) no contract code;
        the blocks get other hashes. ``redeploy`` puts the contracts back at the same
        addresses, empty (as ``dev-chain`` deploying again from the same account does)."""
        self.resets += 1
        self.block = 1
        self.state = _State()
        self.nonces = {}
        self.txs = {}
        self.receipts = {}
        self.pending = {}
        self.snapshots = {self.block: _State()}
        self.forks = {}
        self.code = {}
        if redeploy:
            self.code = {self.token_address: FAKE_CODE, self.stake_wallet_address: FAKE_CODE}

    def mine(self) -> None:
        """Include every pending transaction whose nonce is next, in nonce order."""
        progressed = True
        while progressed:
            progressed = False
            for (sender, nonce), tx in sorted(self.pending.items()):
                if nonce == self.nonces.get(sender, 0):
                    del self.pending[(sender, nonce)]
                    self._include(tx)
                    progressed = True

    # -- execution -------------------------------------------------------------------------------

    def simulate(self, sender: str, call: Call) -> None:
        """Run ``call`` on a copy of the state: ContractReverted if it would revert."""
        self._execute(copy.deepcopy(self.state), sender, call)

    def _include(self, tx: _Tx) -> None:
        trial = copy.deepcopy(self.state)
        try:
            if tx.call is not None and self._target(tx.call) in self.code:
                self._execute(trial, tx.sender, tx.call)
            status = 1
            self.state = trial
        except ContractReverted:
            status = 0
        self.block += 1
        self.snapshots[self.block] = copy.deepcopy(self.state)
        self.nonces[tx.sender] = tx.nonce + 1
        tx.block_number = self.block
        self.receipts[tx.tx_hash] = Receipt(
            tx.tx_hash, status, self.block, FAKE_GAS, block_hash=self.block_hash(self.block)
        )

    def _target(self, call: Call) -> str:
        return self.token_address if call.contract == "token" else self.stake_wallet_address

    def _mint(self, to: str, amount: int) -> None:
        self.state.balances[to] = self.state.balances.get(to, 0) + amount

    def _execute(self, st: _State, sender: str, call: Call) -> None:
        handler = _HANDLERS.get((call.contract, call.function))
        if handler is None or (
            call.function in ("transferPaymentRef", "refUsed") and not self.payment_ref
        ):
            # Calling a function a contract lacks (and no fallback) reverts without a reason.
            raise _revert("execution reverted")
        handler(self, st, sender, *call.args)

    # token
    def _approve(self, st: _State, sender: str, spender: Any, amount: Any) -> None:
        st.allowances[(sender, _addr(spender))] = _amount(amount)

    def _token_mint(self, st: _State, sender: str, to: Any, amount: Any) -> None:
        if sender != self.owner:
            raise _revert(f"OwnableUnauthorizedAccount({sender})")
        st.balances[_addr(to)] = st.balances.get(_addr(to), 0) + _amount(amount)

    def _transfer(self, st: _State, src: str, dst: str, amount: int) -> None:
        have = st.balances.get(src, 0)
        if have < amount:
            raise _revert(f"ERC20InsufficientBalance({src}, {have}, {amount})")
        st.balances[src] = have - amount
        st.balances[dst] = st.balances.get(dst, 0) + amount

    def _token_transfer(self, st: _State, sender: str, to: Any, amount: Any) -> None:
        self._transfer(st, sender, _addr(to), _amount(amount))

    # stake wallet
    def _add_funds(self, st: _State, sender: str, amount: Any, stake_id: Any, wallet: Any) -> None:
        amount, wallet = _amount(amount), _addr(wallet)
        sid = str(stake_id)
        if amount == 0:
            raise _revert("StakeWallet: amount is zero")
        if not sid:
            raise _revert("StakeWallet: empty id")
        if wallet == ZERO:
            raise _revert("StakeWallet: wallet is the zero address")
        stake = st.stakes.get(sid)
        if stake is not None and stake.wallet != wallet:
            raise _revert("StakeWallet: id belongs to another wallet")
        if stake is None:
            self._check_binding(sid, wallet)
            stake = st.stakes[sid] = _Stake(0, sid, wallet)
        allowed = st.allowances.get((sender, self.stake_wallet_address), 0)
        if allowed < amount:
            raise _revert(
                f"ERC20InsufficientAllowance({self.stake_wallet_address}, {allowed}, {amount})"
            )
        self._transfer(st, sender, self.stake_wallet_address, amount)
        st.allowances[(sender, self.stake_wallet_address)] = allowed - amount
        stake.balance += amount
        st.total_staked += amount

    def _withdraw(self, st: _State, sender: str, stake_id: Any, amount: Any) -> None:
        amount = _amount(amount)
        stake = st.stakes.get(str(stake_id))
        if stake is None:
            raise _revert("StakeWallet: no such stake")
        if sender != stake.wallet:
            raise _revert("StakeWallet: caller does not own this stake")
        if amount == 0:
            raise _revert("StakeWallet: amount is zero")
        if stake.balance < amount:
            raise _revert("StakeWallet: insufficient stake")
        stake.balance -= amount
        st.total_staked -= amount
        self._transfer(st, self.stake_wallet_address, stake.wallet, amount)

    def _update_wallet(self, st: _State, sender: str, stake_id: Any, new_wallet: Any) -> None:
        stake = st.stakes.get(str(stake_id))
        if stake is None:
            raise _revert("StakeWallet: no such stake")
        if sender != stake.wallet:
            raise _revert("StakeWallet: caller does not own this stake")
        new = _addr(new_wallet)
        if new == ZERO:
            raise _revert("StakeWallet: wallet is the zero address")
        self._check_binding(stake.stake_id, new)
        stake.wallet = new

    def _pay(self, st: _State, sender: str, from_id: Any, to_id: Any, amount: Any) -> None:
        if sender != self.owner:
            raise _revert(f"OwnableUnauthorizedAccount({sender})")
        amount = _amount(amount)
        if amount == 0:
            raise _revert("StakeWallet: amount is zero")
        payer = st.stakes.get(str(from_id))
        if payer is None:
            raise _revert("StakeWallet: no such payer stake")
        if payer.balance < amount:
            raise _revert("StakeWallet: insufficient stake")
        payee = st.stakes.get(str(to_id))
        if payee is None:
            if not _is_address_id(str(to_id)):
                raise _revert("StakeWallet: no such payee stake")
            payee = st.stakes[str(to_id)] = _Stake(0, str(to_id), str(to_id))
        payer.balance -= amount
        payee.balance += amount

    def _pay_ref(
        self, st: _State, sender: str, from_id: Any, to_id: Any, amount: Any, ref: Any
    ) -> None:
        if sender != self.owner:
            raise _revert(f"OwnableUnauthorizedAccount({sender})")
        if not isinstance(ref, bytes) or len(ref) != 32:
            raise ChainError(f"a payment ref is 32 bytes, got {ref!r}")
        if ref == bytes(32):
            raise _revert("StakeWallet: empty ref")
        if ref in st.used_refs:
            raise _revert("StakeWallet: ref already used")
        st.used_refs.add(ref)
        self._pay(st, sender, from_id, to_id, amount)

    @staticmethod
    def _check_binding(stake_id: str, wallet: str) -> None:
        if _is_address_id(stake_id) and stake_id != wallet:
            raise _revert("StakeWallet: address id must be its own wallet")


_HANDLERS: dict[tuple[str, str], Any] = {
    ("token", "approve"): FakeChain._approve,
    ("token", "mint"): FakeChain._token_mint,
    ("token", "transfer"): FakeChain._token_transfer,
    ("stake_wallet", "addFunds"): FakeChain._add_funds,
    ("stake_wallet", "withdrawFunds"): FakeChain._withdraw,
    ("stake_wallet", "updateWalletAddress"): FakeChain._update_wallet,
    ("stake_wallet", "transferPayment"): FakeChain._pay,
    ("stake_wallet", "transferPaymentRef"): FakeChain._pay_ref,
}


class FakeChainClient(TransactingClient):
    """The :class:`parity.chain.ports.ChainClient` port over a :class:`FakeChain`."""

    kind = "fake"

    def __init__(self, chain: FakeChain | None = None, *, receipt_timeout_seconds: float = 5.0):
        self.chain = chain or FakeChain()
        self.receipt_timeout_seconds = receipt_timeout_seconds

    def _up(self) -> FakeChain:
        if self.chain.unreachable:
            raise ChainRetryableError("chain node unreachable: fake chain is down")
        return self.chain

    def _contract_present(self, address: str) -> None:
        if address not in self.chain.code:
            raise ChainError("the contract returned nothing: is it deployed at that address?")

    # -- node and contracts ----------------------------------------------------------------

    @property
    def stake_wallet_address(self) -> str:
        return self.chain.stake_wallet_address

    async def chain_id(self) -> int:
        return self._up().chain_id

    async def block_number(self) -> int:
        return self._up().block

    async def genesis_hash(self) -> str:
        return self._up().block_hash(0)

    async def code_at(self, address: str) -> bytes:
        return self._up().code.get(_addr(address), b"")

    async def token_address(self) -> str:
        chain = self._up()
        self._contract_present(chain.stake_wallet_address)
        return chain.token_address

    async def token_decimals(self) -> int:
        chain = self._up()
        self._contract_present(chain.token_address)
        return chain.decimals

    async def token_symbol(self) -> str:
        chain = self._up()
        self._contract_present(chain.token_address)
        return chain.symbol

    async def supports_payment_ref(self) -> bool:
        chain = self._up()
        return chain.payment_ref and chain.stake_wallet_address in chain.code

    # -- reads -------------------------------------------------------------------------------

    async def token_balance(self, address: str) -> int:
        chain = self._up()
        self._contract_present(chain.token_address)
        return chain.state.balances.get(_addr(address), 0)

    async def allowance(self, owner: str, spender: str) -> int:
        chain = self._up()
        self._contract_present(chain.token_address)
        return chain.state.allowances.get((_addr(owner), _addr(spender)), 0)

    async def stake_of(self, stake_id: str) -> int:
        return (await self.wallet_info(stake_id)).balance

    async def wallet_info(self, stake_id: str) -> WalletInfo:
        chain = self._up()
        self._contract_present(chain.stake_wallet_address)
        stake = chain.state.stakes.get(stake_id)
        if stake is None:
            return WalletInfo(0, "", ZERO, False)
        return WalletInfo(stake.balance, stake.stake_id, stake.wallet, True)

    async def stake_wallet_owner(self) -> str:
        chain = self._up()
        self._contract_present(chain.stake_wallet_address)
        return chain.owner

    async def ref_used(self, ref: bytes) -> bool:
        chain = self._up()
        self._contract_present(chain.stake_wallet_address)
        if not chain.payment_ref:
            raise ContractReverted("execution reverted")
        return ref in chain.state.used_refs

    # -- low-level set -----------------------------------------------------------------------

    async def transaction_count(self, address: str, *, pending: bool = True) -> int:
        chain = self._up()
        sender = _addr(address)
        count = chain.nonces.get(sender, 0)
        if pending:
            while (sender, count) in chain.pending:
                count += 1
        return count

    async def suggest_fees(self) -> Fees:
        chain = self._up()
        return Fees(2 * chain.base_fee + chain.priority_fee, chain.priority_fee)

    async def build_and_sign(
        self,
        signer: Signer,
        call: Call,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
        gas: int | None = None,
    ) -> SignedTx:
        chain = self._up()
        sender = _addr(signer.address)
        target = chain.token_address if call.contract == "token" else chain.stake_wallet_address
        self._contract_present(target)
        if gas is None:
            chain.simulate(sender, call)  # estimation runs the call, as eth_estimateGas does
        fees = fees or await self.suggest_fees()
        nonce = await self.transaction_count(sender) if nonce is None else nonce
        body = {
            "from": sender,
            "nonce": nonce,
            "contract": call.contract,
            "function": call.function,
            "args": [a.hex() if isinstance(a, bytes) else a for a in call.args],
            "bytes_args": [i for i, a in enumerate(call.args) if isinstance(a, bytes)],
            "fees": [fees.max_fee_per_gas, fees.max_priority_fee_per_gas],
        }
        raw = json.dumps(body, sort_keys=True).encode()
        return SignedTx(
            tx_hash="0x" + keccak(raw).hex(),
            raw=raw,
            sender=sender,
            nonce=nonce,
            gas=gas or FAKE_GAS,
            fees=fees,
        )

    async def sign_nonce_filler(
        self, signer: Signer, *, nonce: int, fees: Fees | None = None
    ) -> SignedTx:
        sender = _addr(signer.address)
        fees = fees or await self.suggest_fees()
        body = {
            "from": sender,
            "nonce": nonce,
            "filler": True,
            "fees": [fees.max_fee_per_gas, fees.max_priority_fee_per_gas],
        }
        raw = json.dumps(body, sort_keys=True).encode()
        return SignedTx("0x" + keccak(raw).hex(), raw, sender, nonce, FAKE_GAS, fees)

    async def send_raw(self, raw: bytes) -> str:
        chain = self._up()
        tx_hash = "0x" + keccak(raw).hex()
        if tx_hash in chain.txs:
            return tx_hash  # already known or mined: a re-broadcast is harmless
        try:
            body = json.loads(raw)
            call = None
            if not body.get("filler"):
                args = [
                    bytes.fromhex(a) if i in body["bytes_args"] else a
                    for i, a in enumerate(body["args"])
                ]
                call = Call(body["contract"], body["function"], tuple(args))
            tx = _Tx(tx_hash, _addr(body["from"]), int(body["nonce"]), call)
        except (ValueError, KeyError, TypeError):
            raise ChainError("chain node refused: invalid raw transaction") from None
        if tx.nonce < chain.nonces.get(tx.sender, 0):
            raise NonceTooLow(f"nonce already used: nonce too low ({tx.nonce})")
        replaced = chain.pending.get((tx.sender, tx.nonce))
        if replaced is not None:
            del chain.txs[replaced.tx_hash]
        chain.txs[tx_hash] = tx
        chain.pending[(tx.sender, tx.nonce)] = tx
        if chain.automine:
            chain.mine()
        return tx_hash

    async def receipt(self, tx_hash: str) -> Receipt | None:
        return self._up().receipts.get(tx_hash.lower())

    async def wait_for_receipt(self, tx_hash: str, timeout: float | None = None) -> Receipt:
        limit = self.receipt_timeout_seconds if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            found = await self.receipt(tx_hash)
            if found is not None:
                return found
            if loop.time() >= deadline:
                raise ReceiptTimeout(tx_hash, limit)
            await asyncio.sleep(0.01)

    async def get_transaction(self, tx_hash: str) -> TxInfo | None:
        chain = self._up()
        tx = chain.txs.get(tx_hash.lower())
        if tx is None:
            return None
        if tx.call is None:
            to = tx.sender
        elif tx.call.contract == "token":
            to = chain.token_address
        else:
            to = chain.stake_wallet_address
        return TxInfo(tx.tx_hash, tx.sender, tx.nonce, to, tx.block_number)

    async def aclose(self) -> None:
        return None


if TYPE_CHECKING:  # mypy proves the fake implements the whole port
    _port_check: ChainClient = FakeChainClient()
