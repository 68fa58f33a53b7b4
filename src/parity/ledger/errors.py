from __future__ import annotations

from parity.errors import Conflict, Forbidden, NotFound, Unavailable


class InsufficientFunds(Conflict):
    """Available balance (stake - unsettled debits - open reservations) is below the cost."""

    code = "insufficient_funds"


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
