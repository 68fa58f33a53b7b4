"""The high-level writes, written once over the low-level port methods, so the fake and the
web3 adapter cannot drift apart in how a write is sent, awaited and judged."""

from __future__ import annotations

from abc import ABC, abstractmethod

from parity.chain.errors import ContractReverted
from parity.chain.ports import (
    Call,
    Fees,
    Receipt,
    SignedTx,
    Signer,
    add_funds_call,
    approve_call,
    transfer_payment_ref_call,
    withdraw_call,
)


class TransactingClient(ABC):
    """Mixin: ``transact`` and the named writes of :class:`parity.chain.ports.ChainClient`."""

    @property
    @abstractmethod
    def stake_wallet_address(self) -> str: ...

    @abstractmethod
    async def build_and_sign(
        self,
        signer: Signer,
        call: Call,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
        gas: int | None = None,
    ) -> SignedTx: ...

    @abstractmethod
    async def send_raw(self, raw: bytes) -> str: ...

    @abstractmethod
    async def wait_for_receipt(self, tx_hash: str, timeout: float | None = None) -> Receipt: ...

    async def transact(self, signer: Signer, call: Call) -> Receipt:
        signed = await self.build_and_sign(signer, call)
        tx_hash = await self.send_raw(signed.raw)
        receipt = await self.wait_for_receipt(tx_hash)
        if not receipt.ok:
            raise ContractReverted(f"{call.function} reverted in block", tx_hash=tx_hash)
        return receipt

    async def approve(self, signer: Signer, amount: int, spender: str | None = None) -> Receipt:
        return await self.transact(
            signer, approve_call(spender or self.stake_wallet_address, amount)
        )

    async def add_funds(
        self, signer: Signer, stake_id: str, amount: int, wallet: str | None = None
    ) -> Receipt:
        return await self.transact(
            signer, add_funds_call(amount, stake_id, wallet or signer.address)
        )

    async def withdraw(self, signer: Signer, stake_id: str, amount: int) -> Receipt:
        return await self.transact(signer, withdraw_call(stake_id, amount))

    async def transfer_payment_ref(
        self, signer: Signer, from_id: str, to_id: str, amount: int, ref: bytes
    ) -> Receipt:
        return await self.transact(signer, transfer_payment_ref_call(from_id, to_id, amount, ref))
