"""The fee and refund arithmetic of DESIGN.md §5.2, as the pure rules decide it: over any
amount, fee schedule and sequence of partial refunds, the fee returned so far is
floor(F * R / A) at every step and F at a full refund, money is conserved, and no posting is zero
or goes the wrong way."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerflow.contracts.commands import CustomerKind
from ledgerflow.ledger_db.rules import (
    AccountKind,
    Book,
    FeeSchedule,
    MoneyMoved,
    RefundDecided,
    Rejected,
    TierLimits,
    Wallet,
    house_account_id,
)
from ledgerflow.testkit.commands import payment, refund

FEE_REVENUE = house_account_id(AccountKind.FEE_REVENUE, "EUR")
AMOUNT_MAX = 10**15


@st.composite
def payments_and_refunds(draw: st.DrawFn) -> tuple[int, FeeSchedule, list[int]]:
    amount = draw(st.integers(1, AMOUNT_MAX))
    schedule = FeeSchedule(draw(st.integers(0, 10_000)), draw(st.integers(0, 10**12)))
    refunds: list[int] = []
    left = amount
    for _ in range(draw(st.integers(0, 8))):
        if not left:
            break
        part = draw(st.integers(1, left))
        refunds.append(part)
        left -= part
    if draw(st.booleans()) and left:
        refunds.append(left)  # and the rest: refunded in full
    return amount, schedule, refunds


def shop_book(amount: int, schedule: FeeSchedule) -> tuple[Book, Wallet, Wallet]:
    payer = Wallet(uuid.uuid4(), "EUR", "open", "basic", amount)
    shop = Wallet(
        uuid.uuid4(),
        "EUR",
        "open",
        "basic",
        0,
        kind=CustomerKind.MERCHANT.value,
        customer_id=uuid.uuid4(),
    )
    book = Book(
        wallets={payer.id: payer, shop.id: shop},
        taken_phone_numbers=set(),
        limits={"basic": TierLimits()},
        default_fee=schedule,
    )
    return book, payer, shop


@settings(max_examples=300)
@given(payments_and_refunds())
def test_fees_return_in_proportion_and_money_is_conserved(
    case: tuple[int, FeeSchedule, list[int]],
) -> None:
    amount, schedule, refunds = case
    book, payer, shop = shop_book(amount, schedule)
    paid = payment(payer.id, shop.id, amount)
    moved = book.decide(paid)
    assert isinstance(moved, MoneyMoved)
    fee = min(amount, amount * schedule.bps // 10_000 + schedule.fixed)
    by_account = {p.account_id: p.amount for p in moved.postings}
    assert by_account == {
        payer.id: -amount,
        **({shop.id: amount - fee} if amount - fee else {}),
        **({FEE_REVENUE: fee} if fee else {}),
    }
    refunded = returned = 0
    for part in refunds:
        decided = book.decide(refund(paid, part))
        assert isinstance(decided, RefundDecided), decided
        postings = {p.account_id: p.amount for p in decided.moved.postings}
        assert all(p.amount != 0 for p in decided.moved.postings)
        assert sum(postings.values()) == 0
        assert postings[payer.id] == part
        assert postings.get(shop.id, 0) <= 0
        assert postings.get(FEE_REVENUE, 0) <= 0
        refunded += part
        returned += decided.fee_returned
        assert returned == fee * refunded // amount
        assert decided.payment.fee_returned == returned
    assert shop.balance >= 0
    if refunded == amount:
        assert returned == fee
        assert (payer.balance, shop.balance) == (amount, 0)
        beyond = book.decide(refund(paid, 1))
        assert isinstance(beyond, Rejected)
        assert beyond.reason.value == "refund_exceeds_payment"
