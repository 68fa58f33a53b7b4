"""Pricing, metering and postings in core/billing: exact integer arithmetic, legs sum to zero."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity.core.billing.postings import (
    Leg,
    UnbalancedPosting,
    available,
    check_balanced,
    payment_legs,
    protocol_fee,
)
from parity.core.billing.pricing import (
    ComputePrice,
    charge,
    metered_amount,
    reservation_amount,
)

ACCOUNT = st.sampled_from(["0x" + c * 40 for c in "abc"])
AMOUNT = st.integers(min_value=0, max_value=2**256 - 1)
BPS = st.integers(min_value=0, max_value=10_000)


@pytest.mark.parametrize(
    ("cores", "memory_mb", "gpus", "expected"),
    [
        (1.0, 0, 0, 10_000),  # 1000 millicores * 10
        (0.0, 0, 0, 10_000),  # at least one core's slot
        (2.5, 0, 0, 25_000),
        (1.0, 512, 0, 10_000 + 1000 * 512 * 2),
        (1.0, 0, 2, 10_000 + 1000 * 2 * 7),
    ],
)
def test_rate_counts_cores_memory_and_gpus(cores, memory_mb, gpus, expected):
    price = ComputePrice(base=0, cpu_core_second=10, memory_mb_second=2, gpu_second=7)
    assert price.rate_milli(cores, memory_mb, gpus) == expected


def test_charge_rounds_up_once_to_a_whole_base_unit():
    assert charge(0, 1, 1) == 1  # 1/1000 per second for 1 ms is a millionth: rounds up to 1
    assert charge(5, 10_000, 12_500) == 5 + 125
    assert charge(5, 10_000, -100) == 5  # a clock that went backwards bills nothing extra


def test_reservation_is_the_charge_for_the_whole_timeout():
    assert reservation_amount(100, 10_000, 60) == 700


def test_metering_is_capped_by_the_reservation():
    snapshot = {"base": "100", "rate_milli": "10000"}
    assert metered_amount(snapshot, 12_500, 700) == 225
    assert metered_amount(snapshot, 600_000, 700) == 700


def test_free_price_is_free():
    assert ComputePrice().free
    assert not ComputePrice(base=1).free


def test_fee_rounds_down_in_the_payees_favour():
    assert protocol_fee(225, 1000) == 22
    assert protocol_fee(9, 1000) == 0
    with pytest.raises(ValueError, match="fee_bps"):
        protocol_fee(1, 10_001)


def test_a_fee_needs_a_protocol_account():
    with pytest.raises(ValueError, match="protocol account"):
        payment_legs("0x" + "a" * 40, "0x" + "b" * 40, 1000, fee_bps=100)


def test_an_unbalanced_posting_is_refused():
    with pytest.raises(UnbalancedPosting):
        check_balanced([Leg("a", "payer", -5), Leg("b", "payee", 4)])


@given(payer=ACCOUNT, payee=ACCOUNT, protocol=ACCOUNT, amount=AMOUNT, bps=BPS)
def test_payment_legs_always_sum_to_zero(payer, payee, protocol, amount, bps):
    legs = payment_legs(payer, payee, amount, fee_bps=bps, protocol=protocol)
    assert sum(leg.amount for leg in legs) == 0
    assert all(leg.amount != 0 for leg in legs)
    debit = [leg for leg in legs if leg.amount < 0]
    assert sum(-leg.amount for leg in debit) == amount
    assert all(leg.counterparty == payer for leg in legs if leg.amount > 0)


@given(stake=AMOUNT, debits=AMOUNT, reserved=AMOUNT)
def test_available_is_stake_minus_debits_minus_reservations(stake, debits, reserved):
    assert available(stake, debits, reserved) + debits + reserved == stake
