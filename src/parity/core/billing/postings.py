"""Double-entry postings (ARCHITECTURE §6): every posting's legs sum to zero.

A paid piece of work posts ``payer -P``, ``payee +(P - fee)`` and ``protocol +fee`` with
``fee = floor(P * fee_bps / 10_000)`` (the rounding favours the payee). Zero legs are left
out; a posting of zero has no legs at all.
"""

from __future__ import annotations

from dataclasses import dataclass

BPS = 10_000


class UnbalancedPosting(ValueError):
    """A posting whose legs do not sum to zero: a bug, never stored."""


@dataclass(frozen=True, slots=True)
class Leg:
    account: str
    role: str  # payer | payee | protocol
    amount: int  # negative = debit
    counterparty: str | None = None  # for a credit: whose stake pays it


def protocol_fee(amount: int, fee_bps: int) -> int:
    """``floor(amount * fee_bps / 10_000)``."""
    if not 0 <= fee_bps <= BPS:
        raise ValueError(f"fee_bps must be within 0..{BPS}, got {fee_bps}")
    if amount < 0:
        raise ValueError("a payment amount is never negative")
    return amount * fee_bps // BPS


def payment_legs(
    payer: str, payee: str, amount: int, *, fee_bps: int = 0, protocol: str | None = None
) -> list[Leg]:
    """The legs of ``payer`` paying ``amount`` for work done by ``payee``, minus the protocol's
    fee. Checked to balance before it is returned."""
    fee = protocol_fee(amount, fee_bps)
    if fee and not protocol:
        raise ValueError("a protocol fee needs a protocol account")
    legs: list[Leg] = []
    if amount:
        legs.append(Leg(payer, "payer", -amount))
    if amount - fee:
        legs.append(Leg(payee, "payee", amount - fee, counterparty=payer))
    if fee and protocol:
        legs.append(Leg(protocol, "protocol", fee, counterparty=payer))
    check_balanced(legs)
    return legs


def check_balanced(legs: list[Leg]) -> None:
    """Raise :class:`UnbalancedPosting` unless the legs sum to exactly zero."""
    total = sum(leg.amount for leg in legs)
    if total != 0:
        raise UnbalancedPosting(f"posting legs sum to {total}, not 0")


def available(stake: int, unsettled_debits: int, open_reservations: int) -> int:
    """Spendable = on-chain stake - debits not yet settled on chain - open reservations
    (``unsettled_debits`` and ``open_reservations`` are given as positive totals)."""
    return stake - unsettled_debits - open_reservations
