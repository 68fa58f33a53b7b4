"""What the ledger services need, built once from settings by the container."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from parity.chain.errors import ChainError
from parity.chain.ports import ChainClient
from parity.chain.stake_ids import StakeIdMode
from parity.clock import Clock
from parity.core.billing.pricing import ComputePrice
from parity.ledger.errors import BillingUnavailable, ChainNotConfigured


class StakeReader:
    """On-chain stake per stake id, cached for ``ttl_seconds`` (0 = always ask the node).

    A stake only drops through a withdrawal by its owner or through our own settlement (which
    the ledger counts as an unsettled debit until confirmed), so a short cache cannot let
    settled work be spent twice; the window it leaves is a withdrawal made within the TTL."""

    def __init__(
        self,
        chain: Callable[[], ChainClient | None],
        ttl_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._chain = chain
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, int]] = {}

    async def stake_of(self, stake_id: str) -> int:
        now = self._monotonic()
        hit = self._cache.get(stake_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        client = self._chain()
        if client is None:
            raise ChainNotConfigured(
                "this server has no chain configured (FILECOIN_RPC), so stakes and balances "
                "cannot be read"
            )
        try:
            amount = await client.stake_of(stake_id)
        except ChainError as exc:
            raise BillingUnavailable(f"could not read the stake of {stake_id}: {exc}") from exc
        self._cache[stake_id] = (now, amount)
        return amount

    async def decimals(self) -> int:
        """The token's decimals (18 when no chain is configured), for display strings."""
        client = self._chain()
        if client is None:
            return 18
        try:
            return await client.token_decimals()
        except ChainError:
            return 18

    async def symbol(self, fallback: str) -> str:
        """The token's ``symbol()`` for display strings; ``fallback`` (FILECOIN_TOKEN_SYMBOL)
        when no chain is configured or the token does not answer."""
        client = self._chain()
        if client is None:
            return fallback
        try:
            return await client.token_symbol() or fallback
        except ChainError:
            return fallback


@dataclass
class EscrowState:
    """Whether any work may hold escrow. False only when pricing is off and no reservation was
    open at start-up (checked once by the server's lifespan), so unpriced work skips the
    per-task reservation lookup. Replicas share one configuration."""

    possible: bool = True


@dataclass(frozen=True)
class LedgerDeps:
    clock: Clock
    price: ComputePrice
    default_timeout_seconds: int
    fee_bps: int
    protocol_account: str | None
    min_stake: int  # base units
    min_stake_tokens: str  # or token units, converted with the token's decimals
    stake_id_mode: StakeIdMode
    stakes: StakeReader
    token_symbol: str = "TOKEN"
    escrow: EscrowState = field(default_factory=EscrowState)

    @property
    def pricing_enabled(self) -> bool:
        return not self.price.free
