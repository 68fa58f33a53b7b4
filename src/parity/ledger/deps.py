"""What the ledger services need, built once from settings by the container."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from parity.chain.errors import ChainError
from parity.chain.ports import ChainClient
from parity.chain.stake_ids import StakeIdMode
from parity.clock import Clock, SystemClock
from parity.core.billing.pricing import ComputePrice
from parity.ledger.errors import BillingUnavailable, ChainNotConfigured

# How far apart the replicas' clocks may be. A debit settled this long before a stake was read
# is still counted against that stake (it may not show in it yet): see :meth:`StakeReader.read`.
CLOCK_SKEW_SECONDS = 1.0


@dataclass(frozen=True)
class StakeRead:
    """One stake figure and when it was asked of the node (UTC, taken just before the call, so
    the figure includes every transaction mined before ``read_at``)."""

    amount: int
    read_at: datetime
    cached: bool = False  # served from the cache (asked of the node earlier than this request)


class StakeReader:
    """On-chain stake per stake id, cached for ``ttl_seconds`` (0 = always ask the node).

    A stake drops through our own settlement or through a withdrawal by its owner. A cached
    figure may predate a settlement confirmed since (whose debit is then no longer unsettled),
    so each read carries ``read_at``, and :func:`~parity.ledger.service.balance` still counts
    every debit settled at or after ``read_at - skew_seconds`` against that figure, and asks
    the node again when it finds one. ``skew_seconds`` covers replicas whose clocks disagree
    (``settled_at`` is written by the replica that settles). A settlement is confirmed only
    after it was mined, so a figure read after its confirmation includes it. What the cache
    can still miss is a withdrawal made within the TTL: work may be reserved against tokens no
    longer staked, and the settlement that would pay for it is refused or reverts, and waits."""

    def __init__(
        self,
        chain: Callable[[], ChainClient | None],
        ttl_seconds: float,
        clock: Clock | None = None,
        *,
        skew_seconds: float = CLOCK_SKEW_SECONDS,
    ) -> None:
        self._chain = chain
        self._ttl = ttl_seconds
        self._clock: Clock = clock or SystemClock()
        self.skew = timedelta(seconds=skew_seconds)
        self._cache: dict[str, tuple[float, StakeRead]] = {}

    async def stake_of(self, stake_id: str) -> int:
        return (await self.read(stake_id)).amount

    async def read(self, stake_id: str, *, fresh: bool = False) -> StakeRead:
        """The stake and when it was read: from the cache within the TTL unless ``fresh``."""
        now = self._clock.monotonic()
        hit = self._cache.get(stake_id)
        if not fresh and hit is not None and now - hit[0] < self._ttl:
            return replace(hit[1], cached=True)
        client = self._chain()
        if client is None:
            raise ChainNotConfigured(
                "this server has no chain configured (FILECOIN_RPC), so stakes and balances "
                "cannot be read"
            )
        read_at = self._clock.now()  # before the call: the figure is at least this recent
        try:
            amount = await client.stake_of(stake_id)
        except ChainError as exc:
            raise BillingUnavailable(f"could not read the stake of {stake_id}: {exc}") from exc
        read = StakeRead(amount, read_at)
        self._cache[stake_id] = (now, read)
        return read

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
