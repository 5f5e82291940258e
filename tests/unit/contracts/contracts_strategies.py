"""Hypothesis strategies for valid contract models, shared by the contract tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import phonenumbers
from hypothesis import strategies as st

from ledgerflow.contracts.commands import (
    ApproveCashOut,
    BankAccount,
    ConfirmCashIn,
    InitiateTransfer,
    RequestOnboarding,
)
from ledgerflow.contracts.events import (
    DETAIL_MAX_CHARS,
    CashInCompleted,
    CashInRejected,
    CashOutCompleted,
    CashOutRejected,
    OnboardingCompleted,
    OnboardingRejected,
    RejectReason,
    Tier,
    TransferCompleted,
    TransferRejected,
)
from ledgerflow.contracts.money import CURRENCIES, MAX_AMOUNT, MAX_BALANCE
from ledgerflow.contracts.topics import CASHIN, CASHOUT, FLOWS, ONBOARDING, TRANSFER, Flow

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

request_onboarding = st.builds(
    RequestOnboarding,
    customer_id=st.uuids(),
    full_name=texts(min_size=1, max_size=200),
    phone_number=st.sampled_from(PHONE_NUMBERS),
    currency=currencies,
    email=st.none() | emails,
    national_id=st.none() | texts(min_size=1, max_size=64),
    bank_account=st.none() | bank_accounts,
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
approve_cash_out = st.builds(
    ApproveCashOut,
    cashout_id=st.uuids(),
    wallet_account_id=st.uuids(),
    amount=amounts,
    currency=currencies,
    fee=fees,
    destination=bank_accounts,
)

COMMANDS: dict[str, st.SearchStrategy[BaseModel]] = {
    ONBOARDING.name: request_onboarding,
    CASHIN.name: confirm_cash_in,
    TRANSFER.name: initiate_transfer,
    CASHOUT.name: approve_cash_out,
}


def _rejected(model: type[BaseModel], id_field: str) -> st.SearchStrategy[BaseModel]:
    return st.builds(
        model,
        **{id_field: st.uuids()},
        reason=st.sampled_from(RejectReason),
        detail=texts(max_size=DETAIL_MAX_CHARS),
    )


COMPLETED: dict[str, st.SearchStrategy[BaseModel]] = {
    ONBOARDING.name: st.builds(
        OnboardingCompleted,
        customer_id=st.uuids(),
        wallet_account_id=st.uuids(),
        currency=currencies,
        tier=st.sampled_from(Tier),
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
    CASHOUT.name: st.builds(
        CashOutCompleted,
        cashout_id=st.uuids(),
        wallet_account_id=st.uuids(),
        amount=amounts,
        currency=currencies,
        fee=fees,
        journal_entry_id=st.uuids(),
        balance_after=balances,
    ),
}
REJECTED: dict[str, st.SearchStrategy[BaseModel]] = {
    ONBOARDING.name: _rejected(OnboardingRejected, "customer_id"),
    CASHIN.name: _rejected(CashInRejected, "cashin_id"),
    TRANSFER.name: _rejected(TransferRejected, "transfer_id"),
    CASHOUT.name: _rejected(CashOutRejected, "cashout_id"),
}

event_ids = st.text(min_size=1, max_size=256)
aware_times = st.datetimes(
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by definition
    max_value=datetime(9999, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)


def flows_with_commands() -> st.SearchStrategy[tuple[Flow, BaseModel]]:
    """A flow and a valid command of it."""
    return st.sampled_from(FLOWS).flatmap(
        lambda flow: COMMANDS[flow.name].map(lambda command: (flow, command))
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
