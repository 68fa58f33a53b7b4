from __future__ import annotations

from dataclasses import dataclass

from parity.core.billing.units import format_token_amount
from parity.errors import Conflict, Forbidden, NotFound, Unavailable


class InsufficientFunds(Conflict):
    """Available balance (stake - unsettled debits - open reservations) is below the cost."""

    code = "insufficient_funds"


@dataclass(frozen=True)
class Shortfall:
    """A task's escrow that does not fit, with what a person needs to act on it. Amounts in
    base units; ``rate_milli`` in thousandths of a base unit per second (the price snapshot)."""

    account: str
    required: int
    available: int
    stake: int
    reserved: int
    unsettled_debits: int
    base: int
    rate_milli: int
    timeout_seconds: int
    timeout_is_default: bool
    decimals: int
    symbol: str

    def tokens(self, base_units: int) -> str:
        return f"{format_token_amount(base_units, self.decimals)} {self.symbol}"

    def both(self, base_units: int) -> str:
        """Tokens for people, base units for the API's numbers (``details``)."""
        return f"{self.tokens(base_units)} ({base_units} base units)"

    @property
    def fitting_timeout(self) -> int:
        """The longest timeout_seconds whose escrow fits now (0: none does, only staking
        helps): base + ceil(rate_milli * T / 1000) <= available."""
        left = self.available - self.base
        if self.rate_milli <= 0 or left <= 0:
            return 0
        return min(left * 1000 // self.rate_milli, self.timeout_seconds - 1)

    def error(self) -> InsufficientFunds:
        missing = self.required - self.available
        timeout = f"its timeout_seconds of {self.timeout_seconds}" + (
            " (the server's default, BILLING_DEFAULT_TIMEOUT_SECONDS: the task sets none)"
            if self.timeout_is_default
            else ""
        )
        price = self.tokens(self.base) + " per task"
        if self.rate_milli:
            rate = format_token_amount(self.rate_milli, self.decimals + 3)
            price += f" + {rate} {self.symbol} per second for its resources"
        fixes = []
        if self.fitting_timeout > 0:
            fixes.append(f"set the task's timeout_seconds to at most {self.fitting_timeout}")
        if self.rate_milli:
            fixes.append("ask for fewer resources")
        fixes.append(f"stake at least {self.tokens(missing)} more (parity-server stake)")
        return InsufficientFunds(
            f"this task reserves up to {self.both(self.required)} in escrow: {price} (the "
            f"server's PRICE_* settings) for {timeout}. {self.account} has "
            f"{self.tokens(max(self.available, 0))} available (stake {self.tokens(self.stake)}, "
            f"held for other tasks {self.tokens(self.reserved)}, owed "
            f"{self.tokens(self.unsettled_debits)}): {self.both(missing)} missing. To fit, "
            + ", ".join(fixes[:-1])
            + (", or " if len(fixes) > 1 else "")
            + fixes[-1]
            + ".",
            details={
                "required": str(self.required),
                "available": str(self.available),
                "missing": str(missing),
                "stake": str(self.stake),
                "reserved": str(self.reserved),
                "unsettled_debits": str(self.unsettled_debits),
                "timeout_seconds": self.timeout_seconds,
                "fitting_timeout_seconds": self.fitting_timeout,
                "decimals": self.decimals,
                "symbol": self.symbol,
            },
        )


class InsufficientStake(Forbidden):
    """MIN_STAKE is configured and the caller's stake is below it."""

    code = "insufficient_stake"


class ChainNotConfigured(Conflict):
    """Balances live in the StakeWallet and this server has no chain (FILECOIN_RPC unset)."""

    code = "chain_not_configured"


class BillingUnavailable(Unavailable):
    """Pricing or stake gating is on but the chain cannot be read right now."""

    code = "billing_unavailable"


class SettlementNotFound(NotFound):
    code = "settlement_not_found"


class SettlementNotFailed(Conflict):
    """Only a ``failed`` settlement can be released (``details.status`` says what it is)."""

    code = "settlement_not_failed"


class SettlementPaidOnChain(Conflict):
    """A transaction of the settlement has a successful receipt: releasing its entries would
    pay them twice."""

    code = "settlement_paid_on_chain"
