"""The hold rules of DESIGN.md §5.1 without a database: what each command does to a wallet's
balance, held amount and outgoing totals, and what it refuses in each state."""

from __future__ import annotations

import datetime as dt
import uuid

from ledgerflow.contracts.commands import ApproveCashOut
from ledgerflow.contracts.events import RejectReason, VoidReason
from ledgerflow.ledger_db.rules import (
    Book,
    CashOut,
    CashOutState,
    HoldPlaced,
    HoldVoided,
    MoneyMoved,
    Rejected,
    TierLimits,
    Wallet,
)
from ledgerflow.testkit.commands import cashout, held_cashout, returned, settle, transfer

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()


def wallet(balance: int) -> Wallet:
    return Wallet(uuid.uuid4(), "EUR", "open", "basic", balance, out_day=TODAY)


def book(*wallets: Wallet, limits: TierLimits | None = None, now: dt.datetime = NOW) -> Book:
    return Book(
        wallets={w.id: w for w in wallets},
        taken_phone_numbers=set(),
        limits={"basic": limits or TierLimits()},
        today=now.date(),
        now=now,
        hold_expires_s=3_600,
    )


def test_a_hold_reserves_amount_and_fee_and_counts_toward_the_limits() -> None:
    w = wallet(1_000)
    decision = book(w).decide(held_cashout(w.id, 600, fee=40))
    assert isinstance(decision, HoldPlaced)
    assert (w.balance, w.held, w.available, w.out_today) == (1_000, 640, 360, 640)
    assert decision.expires_at == NOW + dt.timedelta(seconds=3_600)
    assert decision.available_after == 360


def test_the_command_s_expiry_wins_over_the_deployment_s() -> None:
    w = wallet(1_000)
    decision = book(w).decide(held_cashout(w.id, 1, expires_in_s=60))
    assert isinstance(decision, HoldPlaced)
    assert decision.expires_at == NOW + dt.timedelta(seconds=60)


def test_every_debit_checks_the_available_balance() -> None:
    w, other = wallet(1_000), wallet(0)
    ledger = book(w, other)
    assert isinstance(ledger.decide(held_cashout(w.id, 900)), HoldPlaced)
    for command in (
        transfer(w.id, other.id, 101),
        cashout(w.id, 101),
        held_cashout(w.id, 101),
    ):
        refused = ledger.decide(command)
        assert isinstance(refused, Rejected)
        assert refused.reason is RejectReason.INSUFFICIENT_FUNDS
    assert isinstance(ledger.decide(transfer(w.id, other.id, 100)), MoneyMoved)
    assert w.available == 0


def test_settle_posts_the_hold_once_without_counting_it_again() -> None:
    w = wallet(1_000)
    ledger = book(w)
    approve = held_cashout(w.id, 500, fee=25)
    ledger.decide(approve)
    settled = ledger.decide(settle(approve))
    assert isinstance(settled, MoneyMoved)
    assert sorted(p.amount for p in settled.postings) == [-525, 25, 500]
    assert (w.balance, w.held, w.out_today, settled.out_day) == (475, 0, 525, None)
    again = ledger.decide(settle(approve))
    assert isinstance(again, Rejected)
    assert again.reason is RejectReason.ALREADY_SETTLED


def test_a_return_voids_a_pending_hold_and_gives_the_totals_back() -> None:
    w = wallet(1_000)
    ledger = book(w)
    approve = held_cashout(w.id, 300)
    ledger.decide(approve)
    voided = ledger.decide(returned(approve))
    assert isinstance(voided, HoldVoided)
    assert (voided.reason, voided.day_given_back, voided.month_given_back) == (
        VoidReason.RETURNED,
        True,
        True,
    )
    assert (w.balance, w.held, w.out_today, w.out_month) == (1_000, 0, 0, 0)
    late = ledger.decide(settle(approve))
    assert isinstance(late, Rejected)
    assert late.reason is RejectReason.ALREADY_VOIDED


def test_a_void_gives_back_only_the_periods_still_current() -> None:
    w = wallet(1_000)
    w.out_month = 300  # counted earlier this month, on the hold's day
    placed = CashOut(
        uuid.uuid4(),
        w.id,
        "EUR",
        300,
        0,
        CashOutState.PENDING,
        expires_at=NOW + dt.timedelta(hours=1),
        out_day=TODAY - dt.timedelta(days=1),
    )
    w.held = 300
    ledger = book(w)
    ledger.cashouts[placed.cashout_id] = placed
    voided = ledger.decide(returned(approved_like(placed)))
    assert isinstance(voided, HoldVoided)
    assert (voided.day_given_back, voided.month_given_back) == (False, True)
    assert (w.out_today, w.out_month) == (0, 0)


def approved_like(placed: CashOut) -> ApproveCashOut:
    command = held_cashout(placed.wallet_id, placed.amount)
    return command.model_copy(update={"cashout_id": placed.cashout_id})


def test_a_completed_cash_out_returned_is_mirrored_once() -> None:
    w = wallet(1_000)
    ledger = book(w)
    paid = cashout(w.id, 200, fee=5)
    first = ledger.decide(paid)
    assert isinstance(first, MoneyMoved)
    ledger.cashouts[paid.cashout_id] = CashOut(
        paid.cashout_id, w.id, "EUR", 200, 5, CashOutState.IMMEDIATE
    )
    back = ledger.decide(returned(paid))
    assert isinstance(back, MoneyMoved)
    assert sorted(p.amount for p in back.postings) == sorted(-p.amount for p in first.postings)
    assert (w.balance, back.balance_after) == (1_000, 1_000)
    twice = ledger.decide(returned(paid))
    assert isinstance(twice, Rejected)
    assert twice.reason is RejectReason.ALREADY_REVERSED


def test_expiry_voids_only_pending_holds_past_their_time() -> None:
    w = wallet(1_000)
    ledger = book(w)
    approve = held_cashout(w.id, 100, expires_in_s=60)
    ledger.decide(approve)
    assert ledger.expire(approve.cashout_id) is None  # not yet
    ledger.now = NOW + dt.timedelta(seconds=60)
    too_late = ledger.decide(settle(approve))
    assert isinstance(too_late, Rejected)
    assert too_late.reason is RejectReason.HOLD_EXPIRED
    voided = ledger.expire(approve.cashout_id)
    assert isinstance(voided, HoldVoided)
    assert voided.reason is VoidReason.EXPIRED
    assert ledger.expire(approve.cashout_id) is None  # once
    gone = ledger.decide(returned(approve))
    assert isinstance(gone, Rejected)
    assert gone.reason is RejectReason.HOLD_EXPIRED
    assert (w.held, w.out_today) == (0, 0)


def test_the_second_phase_finds_holds_only_on_their_own_wallet() -> None:
    w, other = wallet(1_000), wallet(1_000)
    ledger = book(w, other)
    approve = held_cashout(w.id, 100)
    ledger.decide(approve)
    stranger = settle(approve).model_copy(update={"wallet_account_id": other.id})
    refused = ledger.decide(stranger)
    assert isinstance(refused, Rejected)
    assert refused.reason is RejectReason.HOLD_NOT_FOUND
    unknown = ledger.decide(settle(held_cashout(w.id, 1)))
    assert isinstance(unknown, Rejected)
    assert unknown.reason is RejectReason.HOLD_NOT_FOUND
