"""The pure posting rules, without a database."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from ledgerflow.contracts.commands import (
    ApproveCashOut,
    BankAccount,
    ConfirmCashIn,
    InitiateTransfer,
    RequestOnboarding,
)
from ledgerflow.contracts.events import RejectReason
from ledgerflow.ledger_db.rules import (
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
    assert second == Rejected(
        RejectReason.INSUFFICIENT_FUNDS, "the sender's available balance is too low"
    )
    assert (a.balance, b.balance) == (100, 400)


def test_entries_take_the_ids_made_before_the_locks_then_fresh_ones() -> None:
    a, b = wallet(500), wallet(0)
    ledger = book(a, b)
    first, second = uuid.uuid4(), uuid.uuid4()
    ledger.entry_ids = [second, first]  # drawn from the end
    moved = [ledger.decide(transfer(a, b, 10)) for _ in range(3)]
    assert all(isinstance(m, MoneyMoved) for m in moved)
    ids = [m.entry_id for m in moved if isinstance(m, MoneyMoved)]
    assert ids[:2] == [first, second]
    assert ids[2] not in (first, second)
    assert ids[2].version == 4
    assert ledger.entry_ids == []
    # A rejection takes no id.
    ledger.entry_ids = [first]
    assert isinstance(ledger.decide(transfer(a, b, 10_000)), Rejected)
    assert ledger.entry_ids == [first]


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


def _cash_in(w: Wallet, amount: int) -> ConfirmCashIn:
    return ConfirmCashIn(
        cashin_id=uuid.uuid4(),
        wallet_account_id=w.id,
        amount=amount,
        currency=w.currency,
        bank_reference="REF-1",
    )


def _standard(balance: int = 0) -> Wallet:
    return Wallet(uuid.uuid4(), "EUR", "open", "standard", balance)


@pytest.mark.parametrize("flow", ["cashin", "transfer_out", "transfer_in", "cashout"])
def test_a_tier_without_limits_fails_closed(flow: str) -> None:
    """LIMITS configure only `basic`: a standard wallet has no limits row, which must refuse, not
    move money without bounds (DESIGN §7). Transfers are refused on either side."""
    basic, standard = wallet(500), _standard(500)
    ledger = book(basic, standard)
    cmd = {
        "cashin": _cash_in(standard, 1),
        "transfer_out": transfer(standard, basic, 1),
        "transfer_in": transfer(basic, standard, 1),
        "cashout": cashout(standard, 1),
    }[flow]
    decision = ledger.decide(cmd)
    assert isinstance(decision, Rejected)
    assert decision.reason is RejectReason.LIMIT_EXCEEDED
    assert "no limits are configured" in decision.detail
    assert "standard tier in EUR" in decision.detail
    assert (basic.balance, standard.balance) == (500, 500), "a rejection moves nothing"
    assert ledger.outgoing == {}


def test_limits_are_looked_up_by_currency_then_the_tiers_star_row() -> None:
    limits = {
        "standard:USD": TierLimits(single_amount_max=10),
        "standard:*": TierLimits(single_amount_max=100),
    }
    eur, usd = _standard(), Wallet(uuid.uuid4(), "USD", "open", "standard", 0)
    ledger = Book({eur.id: eur, usd.id: usd}, set(), limits)
    assert isinstance(ledger.decide(_cash_in(eur, 100)), MoneyMoved)  # '*': 100
    refused = ledger.decide(_cash_in(usd, 11))  # its own currency's row first: 10
    assert isinstance(refused, Rejected)
    assert "single-amount limit of 10" in refused.detail
    # An unbounded row (every bound None) is a configured tier: it allows anything.
    ledger.limits = {"standard:*": TierLimits()}
    assert isinstance(ledger.decide(_cash_in(usd, 10**12)), MoneyMoved)


def test_a_debit_records_the_wallets_day_and_an_opened_wallet_starts_on_the_clocks() -> None:
    today, ahead = dt.date(2027, 3, 15), dt.date(2027, 3, 16)
    a, b = wallet(500), wallet(0)
    a.out_day = ahead  # the row is on a later day than the clock: it wins
    ledger = Book({a.id: a, b.id: b}, set(), LIMITS, today=today)
    moved = ledger.decide(transfer(a, b, 10))
    assert isinstance(moved, MoneyMoved)
    assert moved.out_day == ahead
    cash_in = ledger.decide(_cash_in(b, 10))
    assert isinstance(cash_in, MoneyMoved)
    assert cash_in.out_day is None, "no wallet debited"
    opened = ledger.decide(
        RequestOnboarding(
            customer_id=uuid.uuid4(), full_name="Ada", phone_number="+4915112345670", currency="EUR"
        )
    )
    assert isinstance(opened, CustomerOpened)
    assert opened.wallet.out_day == today


def test_each_wallet_posting_carries_the_balance_it_leaves() -> None:
    """The read side's running balance: per posting, the wallet's balance once it applied, in
    decision order within a batch; None for house accounts (split over shards)."""
    a, b = wallet(500), wallet(0)
    ledger = book(a, b)
    first = ledger.decide(transfer(a, b, 200))
    second = ledger.decide(transfer(b, a, 50))
    out = ledger.decide(cashout(a, 100, fee=5))
    assert isinstance(first, MoneyMoved)
    assert isinstance(second, MoneyMoved)
    assert isinstance(out, MoneyMoved)
    by_account = [
        dict(zip((p.account_id for p in d.postings), d.balances_after, strict=True))
        for d in (first, second, out)
    ]
    assert (by_account[0][a.id], by_account[0][b.id]) == (300, 200)
    assert (by_account[1][a.id], by_account[1][b.id]) == (350, 150)
    assert by_account[2][a.id] == 245
    assert [
        after
        for p, after in zip(out.postings, out.balances_after, strict=True)
        if p.account_id != a.id
    ] == [None, None]
