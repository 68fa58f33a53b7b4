"""Priced work the ledger holds that only a settlement worker pays: open escrow, credits not
yet in a payment, payments not yet confirmed. A server started on such a ledger without the
chain settings (an easy slip: the settings are read from the working directory) settles none
of it, so start-up logs a warning and ``/api/status`` lists one. Three aggregate counts, never
rows; read only while this server's settlement worker is off."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from parity.container import Container
from parity.ledger.models import Entry, Reservation, Settlement
from parity.logging import get_logger

log = get_logger("parity.system")

CREDIT_ROLES = ("payee", "protocol")
# Settlements that are not final: on their way to the chain, or held for an operator (failed).
UNCONFIRMED = ("pending", "signed", "broadcast", "mined", "failed")


@dataclass(frozen=True)
class UnpaidWork:
    open_reservations: int
    unpaid_credits: int
    unconfirmed_settlements: int

    @property
    def any(self) -> bool:
        return bool(self.open_reservations or self.unpaid_credits or self.unconfirmed_settlements)

    def describe(self) -> str:
        """E.g. "2 settlements not confirmed on chain, 1 open priced reservation"."""
        parts = [
            (self.unconfirmed_settlements, "settlement", "settlements", "not confirmed on chain"),
            (self.unpaid_credits, "posted credit", "posted credits", "not yet in a settlement"),
            (self.open_reservations, "open priced reservation", "open priced reservations", ""),
        ]
        return ", ".join(
            " ".join(w for w in (str(n), one if n == 1 else many, rest) if w)
            for n, one, many, rest in parts
            if n
        )


async def count_unpaid(session: AsyncSession) -> UnpaidWork:
    reservations = select(func.count()).where(Reservation.status == "open")
    credits = select(func.count()).where(
        Entry.role.in_(CREDIT_ROLES), Entry.settlement_id.is_(None), Entry.settled_at.is_(None)
    )
    settlements = select(func.count()).where(Settlement.status.in_(UNCONFIRMED))
    return UnpaidWork(
        open_reservations=int(await session.scalar(reservations) or 0),
        unpaid_credits=int(await session.scalar(credits) or 0),
        unconfirmed_settlements=int(await session.scalar(settlements) or 0),
    )


def _why_off(container: Container) -> str:
    s = container.settings
    if container.chain is None:
        return "FILECOIN_RPC is not set"
    if not s.settlement_private_key and s.settlement_keystore_path is None:
        return "no settlement signer: SETTLEMENT_PRIVATE_KEY or SETTLEMENT_KEYSTORE_PATH"
    return "its background jobs are not running"


def settlement_off_warning(container: Container, unpaid: UnpaidWork) -> str:
    """What is held, why this server pays none of it, and what to set."""
    text = (
        f"the ledger holds priced work ({unpaid.describe()}) but this server's settlement "
        f"worker is off ({_why_off(container)}): nothing is settled on chain until the chain "
        "settings (FILECOIN_RPC, FILECOIN_STAKE_WALLET_ADDRESS and a settlement signer) are given"
    )
    if not container.settings.embedded:
        text += " or another server on this database settles"
    if not container.ledger.pricing_enabled:
        text += "; pricing is off, so new work is not charged"
    return text


async def unpaid_warning(container: Container, session: AsyncSession) -> str | None:
    """The warning, when this server does not settle and the ledger holds unpaid work."""
    if container.settlement is not None:
        return None
    unpaid = await count_unpaid(session)
    return settlement_off_warning(container, unpaid) if unpaid.any else None


async def warn_unpaid_at_start(container: Container) -> str | None:
    """Log ``ledger_unpaid_settlement_off`` at start-up when it applies; returns its text."""
    async with container.db.read_session() as session:
        if container.settlement is not None:
            return None
        unpaid = await count_unpaid(session)
    if not unpaid.any:
        return None
    text = settlement_off_warning(container, unpaid)
    log.warning(
        "ledger_unpaid_settlement_off",
        detail=text,
        open_reservations=unpaid.open_reservations,
        unpaid_credits=unpaid.unpaid_credits,
        unconfirmed_settlements=unpaid.unconfirmed_settlements,
    )
    return text
