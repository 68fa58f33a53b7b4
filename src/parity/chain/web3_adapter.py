"""The chain port over JSON-RPC: web3's AsyncWeb3 + AsyncHTTPProvider, signing locally.

* Every request has a timeout (``request_timeout_seconds``); web3's own retry loop is off so the
  caller (the settlement worker) decides about retries, from the error's class.
* Transactions are EIP-1559 (type 2): ``maxFeePerGas = 2 * baseFee + priority``, priority from
  ``eth_maxPriorityFeePerGas`` (web3 falls back to fee history). Gas is always estimated —
  FEVM charges Filecoin gas, hundreds of times Ethereum's numbers, and it changes at upgrades —
  and multiplied by ``gas_margin`` (1.2).
* Receipts are polled up to ``receipt_timeout_seconds`` (300 s by default: FEVM blocks are 30 s
  apart and a transaction can take several).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import aiohttp
from eth_abi.abi import encode as abi_encode
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import TransactionNotFound

from parity.chain.base import TransactingClient
from parity.chain.compiled import ArtifactName, load_artifact
from parity.chain.errors import ChainError, NonceTooLow, ReceiptTimeout
from parity.chain.ports import (
    Call,
    ContractName,
    Fees,
    Receipt,
    SignedTx,
    Signer,
    TxInfo,
    WalletInfo,
)
from parity.chain.rpc_errors import classify

T = TypeVar("T")

_ARTIFACT: dict[ContractName, ArtifactName] = {
    "token": "ParityToken",
    "stake_wallet": "StakeWallet",
}
PAYMENT_REF_SIGNATURE = "transferPaymentRef(string,string,uint256,bytes32)"
_PUSH4 = b"\x63"


@dataclass(frozen=True)
class Web3Options:
    """Tuning of :class:`Web3ChainClient`; the defaults suit FEVM."""

    request_timeout_seconds: float = 30.0
    receipt_timeout_seconds: float = 300.0
    poll_interval_seconds: float = 2.0
    gas_margin: float = 1.2


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


def _checksum(address: str) -> ChecksumAddress:
    try:
        return to_checksum_address(address)
    except (ValueError, TypeError):
        raise ChainError(f"not a 0x address: {address!r}") from None


def _custom_errors() -> dict[bytes, tuple[str, list[str]]]:
    table: dict[bytes, tuple[str, list[str]]] = {}
    for name in _ARTIFACT.values():
        for entry in load_artifact(name).abi:
            if entry.get("type") == "error":
                types = [str(i["type"]) for i in entry.get("inputs", [])]
                selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4]
                table[selector] = (str(entry["name"]), types)
    return table


def _input_types() -> dict[tuple[ContractName, str], list[str]]:
    table: dict[tuple[ContractName, str], list[str]] = {}
    for contract, name in _ARTIFACT.items():
        for entry in load_artifact(name).abi:
            if entry.get("type") == "function":
                table[(contract, str(entry["name"]))] = [
                    str(i["type"]) for i in entry.get("inputs", [])
                ]
    return table


class Web3ChainClient(TransactingClient):
    kind = "web3"

    def __init__(
        self,
        rpc_url: str,
        *,
        chain_id: int,
        stake_wallet_address: str,
        token_address: str = "",
        options: Web3Options | None = None,
    ) -> None:
        self.rpc_url = rpc_url
        self._chain_id = chain_id
        self._options = options or Web3Options()
        provider = AsyncHTTPProvider(
            rpc_url,
            request_kwargs={
                "timeout": aiohttp.ClientTimeout(total=self._options.request_timeout_seconds)
            },
            exception_retry_configuration=None,
        )
        self._w3 = AsyncWeb3(provider)
        self._stake_wallet = stake_wallet_address.lower()
        self._token = token_address.lower() or None
        self._token_verified = False
        self._decimals: int | None = None
        self._symbol: str | None = None
        self._supports_ref: bool | None = None
        self._contracts: dict[ContractName, AsyncContract] = {}
        self._errors = _custom_errors()
        self._types = _input_types()

    # -- plumbing ------------------------------------------------------------------------------

    async def _rpc(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except ChainError:
            raise
        except Exception as exc:
            raise classify(exc, self._errors) from exc

    async def _contract(self, name: ContractName) -> AsyncContract:
        found = self._contracts.get(name)
        if found is None:
            address = self._stake_wallet if name == "stake_wallet" else await self.token_address()
            if not address:
                raise ChainError("FILECOIN_STAKE_WALLET_ADDRESS is not set")
            found = self._w3.eth.contract(
                address=_checksum(address), abi=load_artifact(_ARTIFACT[name]).abi
            )
            self._contracts[name] = found
        return found

    async def _view(self, contract: ContractName, function: str, *args: Any) -> Any:
        c = await self._contract(contract)
        fn = c.get_function_by_name(function)(*self._abi_args(contract, function, args))
        return await self._rpc(fn.call())

    def _abi_args(self, contract: ContractName, function: str, args: tuple[Any, ...]) -> list[Any]:
        types = self._types.get((contract, function))
        if types is None:
            raise ChainError(f"{contract} has no function {function}")
        if len(types) != len(args):
            raise ChainError(f"{function} takes {len(types)} arguments, got {len(args)}")
        # web3 insists on checksummed addresses; stake ids (type string) stay as given.
        return [
            _checksum(a) if t == "address" and isinstance(a, str) else a
            for t, a in zip(types, args, strict=True)
        ]

    # -- node and contracts ----------------------------------------------------------------

    @property
    def stake_wallet_address(self) -> str:
        return self._stake_wallet

    async def chain_id(self) -> int:
        return int(await self._rpc(self._w3.eth.chain_id))

    async def block_number(self) -> int:
        return int(await self._rpc(self._w3.eth.block_number))

    async def genesis_hash(self) -> str:
        block = await self._rpc(self._w3.eth.get_block(0))
        return _hex(block["hash"])

    async def code_at(self, address: str) -> bytes:
        return bytes(await self._rpc(self._w3.eth.get_code(_checksum(address))))

    async def token_address(self) -> str:
        if not self._token_verified:
            actual = str(await self._view("stake_wallet", "token")).lower()
            if self._token is not None and self._token != actual:
                # Approving one token while the StakeWallet pulls another fails every stake.
                raise ChainError(
                    f"FILECOIN_TOKEN_ADDRESS {self._token} is not the StakeWallet's token "
                    f"{actual}; fix it or leave it empty"
                )
            self._token, self._token_verified = actual, True
        assert self._token is not None
        return self._token

    async def token_decimals(self) -> int:
        if self._decimals is None:
            self._decimals = int(await self._view("token", "decimals"))
        return self._decimals

    async def token_symbol(self) -> str:
        if self._symbol is None:
            self._symbol = str(await self._view("token", "symbol"))
        return self._symbol

    async def supports_payment_ref(self) -> bool:
        # The dispatcher compares the calldata selector against PUSH4 constants, so a contract
        # with the function carries PUSH4 <selector> in its runtime code.
        if self._supports_ref is None:
            selector = keccak(text=PAYMENT_REF_SIGNATURE)[:4]
            self._supports_ref = _PUSH4 + selector in await self.code_at(self._stake_wallet)
        return self._supports_ref

    # -- reads -------------------------------------------------------------------------------

    async def token_balance(self, address: str) -> int:
        return int(await self._view("token", "balanceOf", address))

    async def allowance(self, owner: str, spender: str) -> int:
        return int(await self._view("token", "allowance", owner, spender))

    async def stake_of(self, stake_id: str) -> int:
        return int(await self._view("stake_wallet", "getBalance", stake_id))

    async def wallet_info(self, stake_id: str) -> WalletInfo:
        balance, sid, wallet, exists = await self._view("stake_wallet", "getWalletInfo", stake_id)
        return WalletInfo(int(balance), str(sid), str(wallet).lower(), bool(exists))

    async def stake_wallet_owner(self) -> str:
        return str(await self._view("stake_wallet", "owner")).lower()

    async def ref_used(self, ref: bytes) -> bool:
        return bool(await self._view("stake_wallet", "refUsed", ref))

    # -- low-level set -----------------------------------------------------------------------

    async def transaction_count(self, address: str, *, pending: bool = True) -> int:
        block: Literal["pending", "latest"] = "pending" if pending else "latest"
        return int(await self._rpc(self._w3.eth.get_transaction_count(_checksum(address), block)))

    async def suggest_fees(self) -> Fees:
        block = await self._rpc(self._w3.eth.get_block("latest"))
        base = block.get("baseFeePerGas")
        if base is None:
            raise ChainError("the node's blocks have no baseFeePerGas: EIP-1559 is required")
        priority = int(await self._rpc(self._w3.eth.max_priority_fee))
        return Fees(max_fee_per_gas=2 * int(base) + priority, max_priority_fee_per_gas=priority)

    async def build_and_sign(
        self,
        signer: Signer,
        call: Call,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
        gas: int | None = None,
    ) -> SignedTx:
        contract = await self._contract(call.contract)
        args = self._abi_args(call.contract, call.function, call.args)
        data = contract.encode_abi(call.function, args=args)
        return await self._sign(signer, str(contract.address), data, nonce, fees, gas)

    async def sign_nonce_filler(
        self, signer: Signer, *, nonce: int, fees: Fees | None = None
    ) -> SignedTx:
        return await self._sign(signer, signer.address, "0x", nonce, fees, None)

    async def _sign(
        self,
        signer: Signer,
        to: str | None,
        data: str,
        nonce: int | None,
        fees: Fees | None,
        gas: int | None,
    ) -> SignedTx:
        sender = _checksum(signer.address)
        tx: dict[str, Any] = {"from": sender, "data": data, "value": 0}
        if to is not None:
            tx["to"] = _checksum(to)
        if gas is None:
            estimate = int(await self._rpc(self._w3.eth.estimate_gas(cast(Any, tx))))
            gas = math.ceil(estimate * self._options.gas_margin)
        if fees is None:
            fees = await self.suggest_fees()
        if nonce is None:
            nonce = await self.transaction_count(sender)
        del tx["from"]
        tx.update(
            type=2,
            chainId=self._chain_id,
            nonce=nonce,
            gas=gas,
            maxFeePerGas=fees.max_fee_per_gas,
            maxPriorityFeePerGas=fees.max_priority_fee_per_gas,
        )
        signed = signer.sign_transaction(tx)
        return SignedTx(
            tx_hash=_hex(signed.hash),
            raw=bytes(signed.raw_transaction),
            sender=sender.lower(),
            nonce=nonce,
            gas=gas,
            fees=fees,
        )

    async def send_raw(self, raw: bytes) -> str:
        tx_hash = _hex(keccak(raw))
        try:
            sent = await self._rpc(self._w3.eth.send_raw_transaction(raw))
        except NonceTooLow:
            # Ours was mined already (a re-broadcast): fine. Another tx took the nonce: not.
            if await self.get_transaction(tx_hash) is not None:
                return tx_hash
            raise
        except ChainError as exc:
            # Ours is already in the node's pool (anvil says "already imported" for one held
            # behind a nonce gap): a re-broadcast, fine.
            known = ("already known", "known transaction", "already imported")
            if any(k in str(exc).lower() for k in known):
                return tx_hash
            raise
        return _hex(sent)

    async def receipt(self, tx_hash: str) -> Receipt | None:
        try:
            r = await self._rpc(self._w3.eth.get_transaction_receipt(cast(Any, tx_hash)))
        except ChainError as exc:
            if isinstance(exc.__cause__, TransactionNotFound):
                return None
            raise
        created = r.get("contractAddress")
        return Receipt(
            tx_hash=_hex(r["transactionHash"]),
            status=int(r["status"]),
            block_number=int(r["blockNumber"]),
            gas_used=int(r["gasUsed"]),
            contract_address=str(created).lower() if created else None,
            block_hash=_hex(r["blockHash"]) if r.get("blockHash") else None,
        )

    async def wait_for_receipt(self, tx_hash: str, timeout: float | None = None) -> Receipt:
        limit = self._options.receipt_timeout_seconds if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            found = await self.receipt(tx_hash)
            if found is not None:
                return found
            if loop.time() >= deadline:
                raise ReceiptTimeout(tx_hash, limit)
            await asyncio.sleep(min(self._options.poll_interval_seconds, 0.05 + limit / 50))

    async def get_transaction(self, tx_hash: str) -> TxInfo | None:
        try:
            t = await self._rpc(self._w3.eth.get_transaction(cast(Any, tx_hash)))
        except ChainError as exc:
            if isinstance(exc.__cause__, TransactionNotFound):
                return None
            raise
        to = t.get("to")
        block = t.get("blockNumber")
        return TxInfo(
            tx_hash=_hex(t["hash"]),
            sender=str(t["from"]).lower(),
            nonce=int(t["nonce"]),
            to=str(to).lower() if to else None,
            block_number=int(block) if block is not None else None,
        )

    # -- deployment (dev-chain and tests; not part of the port) -------------------------------

    async def deploy(self, signer: Signer, name: ArtifactName, *args: Any) -> str:
        """Deploy one of our contracts; returns its lowercase address."""
        artifact = load_artifact(name)
        encoded = abi_encode(artifact.constructor_inputs(), list(args)).hex()
        signed = await self._sign(signer, None, artifact.bytecode + encoded, None, None, None)
        await self.send_raw(signed.raw)
        receipt = await self.wait_for_receipt(signed.tx_hash)
        if not receipt.ok or receipt.contract_address is None:
            raise ChainError(f"deploying {name} failed (tx {signed.tx_hash})")
        return receipt.contract_address

    async def aclose(self) -> None:
        await self._w3.provider.disconnect()
