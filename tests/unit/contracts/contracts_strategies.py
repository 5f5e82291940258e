"""Hypothesis strategies for valid contract models, shared by the contract tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import phonenumbers
from hypothesis import strategies as st

from ledgerflow.contracts.commands import (
    HOLD_EXPIRES_IN_S_MAX,
    HOLD_EXPIRES_IN_S_MIN,
    ORDER_REFERENCE_MAX_CHARS,
    REFUND_REASON_MAX_CHARS,
    RETURN_CODE_MAX_CHARS,
    RETURN_DETAIL_MAX_CHARS,
    ApproveCashOut,
    BankAccount,
    ConfirmCashIn,
    CustomerKind,
    InitiatePayment,
    InitiateTransfer,
    RequestOnboarding,
    RequestRefund,
    ReturnCashOut,
    SettleCashOut,
    Settlement,
)
from ledgerflow.contracts.events import (
    DETAIL_MAX_CHARS,
    CashInCompleted,
    CashInRejected,
    CashOutCompleted,
    CashOutHeld,
    CashOutRejected,
    CashOutReversed,
    CashOutVoided,
    OnboardingCompleted,
    OnboardingRejected,
    PaymentCompleted,
    PaymentRejected,
    RefundCompleted,
    RefundRejected,
    RejectReason,
    Tier,
    TransferCompleted,
    TransferRejected,
    VoidReason,
)
from ledgerflow.contracts.money import CURRENCIES, MAX_AMOUNT, MAX_BALANCE
from ledgerflow.contracts.topics import (
    CASHIN,
    CASHOUT,
    CASHOUT_RETURN,
    CASHOUT_SETTLE,
    FLOWS,
    ONBOARDING,
    PAYMENT,
    REFUND,
    TRANSFER,
    Flow,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

REGIONS = ("GB", "US", "DE", "KE", "NG", "IT", "IN", "BR", "FR", "JP")


def _example_numbers() -> tuple[str, ...]:
    numbers = []
    for region in REGIONS:
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            number = phonenumbers.example_number_for_type(region, kind)
            assert number is not None
            numbers.append(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    return tuple(numbers)


PHONE_NUMBERS = _example_numbers()

amounts = st.integers(min_value=1, max_value=MAX_AMOUNT)
fees = st.integers(min_value=0, max_value=MAX_AMOUNT)
balances = st.integers(min_value=0, max_value=MAX_BALANCE)
currencies = st.sampled_from(sorted(CURRENCIES))
# Any Unicode text without surrogates (hypothesis' default), so some notes carry characters that
# JSON must escape: those messages take the careful decoding path.
texts = st.text
alnum_dash = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-", min_size=1
)
bank_accounts = st.builds(
    BankAccount,
    bank_code=alnum_dash.filter(lambda s: len(s) <= 32),
    account_number=alnum_dash.filter(lambda s: len(s) <= 34),
)
emails = st.emails().filter(lambda e: len(e) <= 254)
event_ids = st.text(min_size=1, max_size=256)
aware_times = st.datetimes(
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by definition
    max_value=datetime(9999, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)

request_onboarding = st.builds(
    RequestOnboarding,
    customer_id=st.uuids(),
    full_name=texts(min_size=1, max_size=200),
    phone_number=st.sampled_from(PHONE_NUMBERS),
    currency=currencies,
    email=st.none() | emails,
    national_id=st.none() | texts(min_size=1, max_size=64),
    bank_account=st.none() | bank_accounts,
    # v1 requests (no kind), and either kind spelled out (an explicit consumer reads as absent).
    kind=st.none() | st.sampled_from(CustomerKind),
)
confirm_cash_in = st.builds(
    ConfirmCashIn,
    cashin_id=st.uuids(),
    wallet_account_id=st.uuids(),
    amount=amounts,
    currency=currencies,
    bank_reference=texts(min_size=1, max_size=128),
)
initiate_transfer = st.builds(
    InitiateTransfer,
    transfer_id=st.uuids(),
    from_account_id=st.uuids(),
    to_account_id=st.uuids(),
    amount=amounts,
    currency=currencies,
    note=st.none() | texts(max_size=140),
)
hold_expiries = st.integers(min_value=HOLD_EXPIRES_IN_S_MIN, max_value=HOLD_EXPIRES_IN_S_MAX)
# v1 cash-outs (no settlement field), explicit ones of either kind, with or without an expiry.
approve_cash_out = st.builds(
    ApproveCashOut,
    cashout_id=st.uuids(),
    wallet_account_id=st.uuids(),
    amount=amounts,
    currency=currencies,
    fee=fees,
    destination=bank_accounts,
    settlement=st.none() | st.sampled_from(Settlement),
    hold_expires_in_s=st.none() | hold_expiries,
)
settle_cash_out = st.builds(
    SettleCashOut,
    cashout_id=st.uuids(),
    wallet_account_id=st.uuids(),
    bank_reference=texts(min_size=1, max_size=128),
)
return_cash_out = st.builds(
    ReturnCashOut,
    cashout_id=st.uuids(),
    wallet_account_id=st.uuids(),
    return_code=texts(min_size=1, max_size=RETURN_CODE_MAX_CHARS),
    detail=st.none() | texts(max_size=RETURN_DETAIL_MAX_CHARS),
)
initiate_payment = st.builds(
    InitiatePayment,
    payment_id=st.uuids(),
    from_account_id=st.uuids(),
    merchant_account_id=st.uuids(),
    amount=amounts,
    currency=currencies,
    order_reference=st.none() | texts(min_size=1, max_size=ORDER_REFERENCE_MAX_CHARS),
)
request_refund = st.builds(
    RequestRefund,
    refund_id=st.uuids(),
    payment_id=st.uuids(),
    merchant_account_id=st.uuids(),
    amount=amounts,
    currency=currencies,
    reason=st.none() | texts(max_size=REFUND_REASON_MAX_CHARS),
)

COMMANDS: dict[str, st.SearchStrategy[BaseModel]] = {
    ONBOARDING.name: request_onboarding,
    CASHIN.name: confirm_cash_in,
    TRANSFER.name: initiate_transfer,
    CASHOUT.name: approve_cash_out,
    CASHOUT_SETTLE.name: settle_cash_out,
    CASHOUT_RETURN.name: return_cash_out,
    PAYMENT.name: initiate_payment,
    REFUND.name: request_refund,
}


def _rejected(flow: Flow, model: type[BaseModel]) -> st.SearchStrategy[BaseModel]:
    """Rejections as `flow` writes them: with `answers` when its rejections carry it."""
    extra = {"answers": st.just(flow.command_topic)} if flow.rejection_answers else {}
    return st.builds(
        model,
        **{flow.id_field: st.uuids()},
        reason=st.sampled_from(RejectReason),
        detail=texts(max_size=DETAIL_MAX_CHARS),
        **extra,
    )


cash_out_completed = st.builds(
    CashOutCompleted,
    cashout_id=st.uuids(),
    wallet_account_id=st.uuids(),
    amount=amounts,
    currency=currencies,
    fee=fees,
    journal_entry_id=st.uuids(),
    balance_after=balances,
)
cash_out_held = st.builds(
    CashOutHeld,
    cashout_id=st.uuids(),
    wallet_account_id=st.uuids(),
    amount=amounts,
    currency=currencies,
    fee=fees,
    hold_expires_at=aware_times,
    available_after=balances,
)


def _cash_out_voided(reasons: st.SearchStrategy[VoidReason]) -> st.SearchStrategy[BaseModel]:
    return st.builds(
        CashOutVoided,
        cashout_id=st.uuids(),
        wallet_account_id=st.uuids(),
        amount=amounts,
        currency=currencies,
        fee=fees,
        reason=reasons,
        available_after=balances,
    )


cash_out_reversed = st.builds(
    CashOutReversed,
    cashout_id=st.uuids(),
    wallet_account_id=st.uuids(),
    amount=amounts,
    currency=currencies,
    fee=fees,
    journal_entry_id=st.uuids(),
    balance_after=balances,
)


COMPLETED: dict[str, st.SearchStrategy[BaseModel]] = {
    ONBOARDING.name: st.builds(
        OnboardingCompleted,
        customer_id=st.uuids(),
        wallet_account_id=st.uuids(),
        currency=currencies,
        tier=st.sampled_from(Tier),
        kind=st.sampled_from(CustomerKind),
    ),
    CASHIN.name: st.builds(
        CashInCompleted,
        cashin_id=st.uuids(),
        wallet_account_id=st.uuids(),
        amount=amounts,
        currency=currencies,
        journal_entry_id=st.uuids(),
        balance_after=balances,
    ),
    TRANSFER.name: st.builds(
        TransferCompleted,
        transfer_id=st.uuids(),
        from_account_id=st.uuids(),
        to_account_id=st.uuids(),
        amount=amounts,
        currency=currencies,
        journal_entry_id=st.uuids(),
        balance_after=balances,
    ),
    CASHOUT.name: cash_out_completed,
    CASHOUT_SETTLE.name: cash_out_completed,
    # The return flow's `completed` is the void of a pending hold.
    CASHOUT_RETURN.name: _cash_out_voided(st.just(VoidReason.RETURNED)),
    PAYMENT.name: st.builds(
        PaymentCompleted,
        payment_id=st.uuids(),
        from_account_id=st.uuids(),
        merchant_account_id=st.uuids(),
        amount=amounts,
        fee=fees,
        currency=currencies,
        journal_entry_id=st.uuids(),
        balance_after=balances,
    ),
    REFUND.name: st.builds(
        RefundCompleted,
        refund_id=st.uuids(),
        payment_id=st.uuids(),
        merchant_account_id=st.uuids(),
        to_account_id=st.uuids(),
        amount=amounts,
        fee_returned=fees,
        refunded_total=amounts,
        currency=currencies,
        journal_entry_id=st.uuids(),
        balance_after=balances,
    ),
}
REJECTED: dict[str, st.SearchStrategy[BaseModel]] = {
    ONBOARDING.name: _rejected(ONBOARDING, OnboardingRejected),
    CASHIN.name: _rejected(CASHIN, CashInRejected),
    TRANSFER.name: _rejected(TRANSFER, TransferRejected),
    CASHOUT.name: _rejected(CASHOUT, CashOutRejected),
    CASHOUT_SETTLE.name: _rejected(CASHOUT_SETTLE, CashOutRejected),
    CASHOUT_RETURN.name: _rejected(CASHOUT_RETURN, CashOutRejected),
    PAYMENT.name: _rejected(PAYMENT, PaymentRejected),
    REFUND.name: _rejected(REFUND, RefundRejected),
}
# Each flow's results besides completed and rejected, by flow name and topic.
OTHER_RESULTS: dict[str, dict[str, st.SearchStrategy[BaseModel]]] = {
    ONBOARDING.name: {},
    CASHIN.name: {},
    TRANSFER.name: {},
    CASHOUT.name: {
        "cashout.held": cash_out_held,
        "cashout.voided": _cash_out_voided(st.just(VoidReason.EXPIRED)),  # its expiry
    },
    CASHOUT_SETTLE.name: {},
    CASHOUT_RETURN.name: {"cashout.reversed": cash_out_reversed},
    PAYMENT.name: {},
    REFUND.name: {},
}


def flows_with_commands() -> st.SearchStrategy[tuple[Flow, BaseModel]]:
    """A flow and a valid command of it."""
    return st.sampled_from(FLOWS).flatmap(
        lambda flow: COMMANDS[flow.name].map(lambda command: (flow, command))
    )


def _result_strategies(flow: Flow) -> dict[str, st.SearchStrategy[BaseModel]]:
    return {
        flow.completed_topic: COMPLETED[flow.name],
        flow.rejected_topic: REJECTED[flow.name],
        **OTHER_RESULTS[flow.name],
    }


def flows_with_results() -> st.SearchStrategy[tuple[Flow, str, BaseModel]]:
    """A flow, one of its result topics and a valid result event's data for that topic."""
    return st.sampled_from(FLOWS).flatmap(
        lambda flow: st.sampled_from(flow.result_topics).flatmap(
            lambda topic: _result_strategies(flow)[topic].map(lambda event: (flow, topic, event))
        )
    )


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=20,
)
