"""The pure posting rules, without a database."""

from __future__ import annotations

import uuid

import pytest

from contracts.commands import (
    ApproveCashOut,
    BankAccount,
    ConfirmCashIn,
    InitiateTransfer,
    RequestOnboarding,
)
from contracts.events import RejectReason
from ledger_db.rules import (
    AccountKind,
    Book,
    CustomerOpened,
    MoneyMoved,
    Posting,
    Rejected,
    TierLimits,
    Wallet,
    assert_balanced,
    house_account_id,
)

LIMITS = {"basic": TierLimits(single_amount_max=1_000, balance_max=5_000)}


def wallet(balance: int = 0, currency: str = "EUR", status: str = "open") -> Wallet:
    return Wallet(uuid.uuid4(), currency, status, "basic", balance)


def book(*wallets: Wallet) -> Book:
    return Book(wallets={w.id: w for w in wallets}, taken_phone_numbers=set(), limits=LIMITS)


def transfer(a: Wallet, b: Wallet, amount: int, currency: str = "EUR") -> InitiateTransfer:
    return InitiateTransfer(
        transfer_id=uuid.uuid4(),
        from_account_id=a.id,
        to_account_id=b.id,
        amount=amount,
        currency=currency,
    )


def cashout(w: Wallet, amount: int, fee: int = 0) -> ApproveCashOut:
    return ApproveCashOut(
        cashout_id=uuid.uuid4(),
        wallet_account_id=w.id,
        amount=amount,
        currency=w.currency,
        fee=fee,
        destination=BankAccount(bank_code="BANKDEFF", account_number="DE89370400440532013000"),
    )


def test_transfer_moves_money_and_reports_sender_balance() -> None:
    a, b = wallet(500), wallet(0)
    decision = book(a, b).decide(transfer(a, b, 200))
    assert isinstance(decision, MoneyMoved)
    assert (a.balance, b.balance, decision.balance_after) == (300, 200, 300)
    assert sum(p.amount for p in decision.postings) == 0


def test_second_debit_in_a_batch_sees_the_first() -> None:
    a, b = wallet(500), wallet(0)
    ledger = book(a, b)
    assert isinstance(ledger.decide(transfer(a, b, 400)), MoneyMoved)
    second = ledger.decide(transfer(a, b, 400))
    assert second == Rejected(RejectReason.INSUFFICIENT_FUNDS, "the sender's balance is too low")
    assert (a.balance, b.balance) == (100, 400)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("same", RejectReason.SAME_ACCOUNT),
        ("unknown_sender", RejectReason.ACCOUNT_NOT_FOUND),
        ("unknown_receiver", RejectReason.ACCOUNT_NOT_FOUND),
        ("closed", RejectReason.ACCOUNT_CLOSED),
        ("currency", RejectReason.CURRENCY_MISMATCH),
        ("single_limit", RejectReason.LIMIT_EXCEEDED),
        ("balance_limit", RejectReason.LIMIT_EXCEEDED),
    ],
)
def test_transfer_rejections(setup: str, reason: RejectReason) -> None:
    a, b = wallet(900), wallet(4_500)
    closed, stranger = wallet(status="closed"), wallet()
    ledger = book(a, b, closed)
    cmd = {
        "same": transfer(a, a, 10),
        "unknown_sender": transfer(stranger, b, 10),
        "unknown_receiver": transfer(a, stranger, 10),
        "closed": transfer(a, closed, 10),
        "currency": transfer(a, b, 10, currency="USD"),
        "single_limit": transfer(a, b, 1_001),
        "balance_limit": transfer(a, b, 600),
    }[setup]
    decision = ledger.decide(cmd)
    assert isinstance(decision, Rejected)
    assert decision.reason is reason
    assert (a.balance, b.balance) == (900, 4_500), "a rejection moves nothing"


def test_cash_in_credits_wallet_from_clearing() -> None:
    w = wallet(0)
    cmd = ConfirmCashIn(
        cashin_id=uuid.uuid4(),
        wallet_account_id=w.id,
        amount=700,
        currency="EUR",
        bank_reference="REF-1",
    )
    decision = book(w).decide(cmd)
    assert isinstance(decision, MoneyMoved)
    clearing = house_account_id(AccountKind.CASHIN_CLEARING, "EUR")
    assert decision.postings == (Posting(clearing, "EUR", -700), Posting(w.id, "EUR", 700))
    assert w.balance == 700


def test_cash_out_debits_amount_and_fee() -> None:
    w = wallet(1_000)
    decision = book(w).decide(cashout(w, 900, fee=100))
    assert isinstance(decision, MoneyMoved)
    assert w.balance == 0
    amounts = {p.account_id: p.amount for p in decision.postings}
    assert amounts[house_account_id(AccountKind.FEE_REVENUE, "EUR")] == 100
    assert amounts[house_account_id(AccountKind.CASHOUT_CLEARING, "EUR")] == 900


def test_cash_out_without_fee_posts_twice_and_fee_counts_for_funds() -> None:
    w = wallet(1_000)
    ledger = book(w)
    no_fee = ledger.decide(cashout(w, 500))
    assert isinstance(no_fee, MoneyMoved)
    assert len(no_fee.postings) == 2
    short = ledger.decide(cashout(w, 500, fee=1))
    assert isinstance(short, Rejected)
    assert short.reason is RejectReason.INSUFFICIENT_FUNDS


def test_onboarding_takes_the_phone_number() -> None:
    ledger = book()

    def onboard() -> RequestOnboarding:
        return RequestOnboarding(
            customer_id=uuid.uuid4(),
            full_name="Ada",
            phone_number="+4915112345678",
            currency="EUR",
        )

    first = ledger.decide(onboard())
    assert isinstance(first, CustomerOpened)
    assert first.wallet.id in ledger.wallets
    second = ledger.decide(onboard())
    assert isinstance(second, Rejected)
    assert second.reason is RejectReason.PHONE_NUMBER_TAKEN


def test_unbalanced_postings_are_a_bug() -> None:
    a = uuid.uuid4()
    with pytest.raises(AssertionError):
        assert_balanced([Posting(a, "EUR", 5), Posting(a, "EUR", -4)])
    with pytest.raises(AssertionError):
        assert_balanced([Posting(a, "EUR", 0), Posting(a, "EUR", 0)])
    with pytest.raises(AssertionError):
        assert_balanced([Posting(a, "EUR", 5)])


def test_only_the_owner_may_debit() -> None:
    a, b = wallet(500), wallet(0)
    a.owner = "alice"
    ledger = book(a, b)
    assert ledger.refuse_owner(transfer(a, b, 10), "alice") is None
    assert ledger.refuse_owner(transfer(a, b, 10), "mallory") is not None
    assert ledger.refuse_owner(cashout(a, 10), "mallory") is not None
    assert ledger.refuse_owner(transfer(a, b, 10), None) is None, "auth off: no owner check"


def test_daily_and_monthly_outgoing_limits() -> None:
    limits = {"basic:*": TierLimits(daily_out_max=1_000, monthly_out_max=1_500)}
    a, b = wallet(10_000), wallet(0)
    ledger = Book({a.id: a, b.id: b}, set(), limits)
    assert isinstance(ledger.decide(transfer(a, b, 600)), MoneyMoved)
    over_day = ledger.decide(cashout(a, 300, fee=101))
    assert isinstance(over_day, Rejected)
    assert over_day.reason is RejectReason.LIMIT_EXCEEDED
    assert isinstance(ledger.decide(cashout(a, 300, fee=100)), MoneyMoved)  # exactly 1,000
    a.out_today = 0  # a new day, same month
    over_month = ledger.decide(transfer(a, b, 501))
    assert isinstance(over_month, Rejected)
    assert "monthly" in over_month.detail
    assert ledger.outgoing == {a.id: 1_000}
