"""Results: what the ledger did (past tense), the `data` of a result event.

`*.completed` repeats the command's id field, accounts, amount and currency; `*.rejected` repeats
the id field and says why with a stable code. Consumers ignore fields they do not know.
"""

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ledgerflow.contracts.commands import CustomerKind
from ledgerflow.contracts.fields import Timestamp, Uuid
from ledgerflow.contracts.money import Amount, Balance, Currency, Fee

# A rejection's detail is read by people and stored in every consumer: long enough for a list of
# field errors, short enough that a hostile command cannot inflate its rejection.
DETAIL_MAX_CHARS: Final = 1000


class RejectReason(StrEnum):
    """Why a command was rejected: stable snake_case codes, part of the contract."""

    INVALID_COMMAND = "invalid_command"
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_CLOSED = "account_closed"
    SAME_ACCOUNT = "same_account"
    CURRENCY_MISMATCH = "currency_mismatch"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    LIMIT_EXCEEDED = "limit_exceeded"
    PHONE_NUMBER_TAKEN = "phone_number_taken"
    ID_CONFLICT = "id_conflict"
    UNAUTHORIZED = "unauthorized"
    # Second-phase cash-out commands (`cashout.settled`, `cashout.returned`), DESIGN.md §5.1.
    HOLD_NOT_FOUND = "hold_not_found"
    HOLD_EXPIRED = "hold_expired"
    ALREADY_SETTLED = "already_settled"
    ALREADY_VOIDED = "already_voided"
    ALREADY_REVERSED = "already_reversed"
    # Merchants (`payment.initiated`, `refund.requested`), DESIGN.md §5.2.
    NOT_A_MERCHANT = "not_a_merchant"
    PAYMENT_NOT_FOUND = "payment_not_found"
    REFUND_EXCEEDS_PAYMENT = "refund_exceeds_payment"


class VoidReason(StrEnum):
    """Why a hold was released without paying out."""

    RETURNED = "returned"  # the bank answered `cashout.returned` before settling
    EXPIRED = "expired"  # nobody answered before `hold_expires_at`


class Tier(StrEnum):
    """Know-your-customer tier of a wallet; a new customer starts at `basic`."""

    BASIC = "basic"
    STANDARD = "standard"
    FULL = "full"


Detail = Annotated[str, StringConstraints(max_length=DETAIL_MAX_CHARS)]

_JOURNAL_ENTRY = "The ledger's journal entry that recorded it."
_BALANCE_AFTER = "Balance of the wallet the command names first, after it, in minor units."


class OnboardingCompleted(BaseModel):
    """`onboarding.completed`: the customer and the wallet exist."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    customer_id: Uuid
    wallet_account_id: Uuid = Field(description="The new wallet.")
    currency: Currency
    tier: Tier
    kind: CustomerKind = Field(
        default=CustomerKind.CONSUMER,
        description="`consumer` or `merchant`; absent before contract 1.2, read as `consumer`.",
    )


class CashInCompleted(BaseModel):
    """`cashin.completed`: the wallet was credited."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashin_id: Uuid
    wallet_account_id: Uuid
    amount: Amount
    currency: Currency
    journal_entry_id: Uuid = Field(description=_JOURNAL_ENTRY)
    balance_after: Balance = Field(description=_BALANCE_AFTER)


class TransferCompleted(BaseModel):
    """`transfer.completed`: the money moved; `balance_after` is the sender's."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    transfer_id: Uuid
    from_account_id: Uuid
    to_account_id: Uuid
    amount: Amount
    currency: Currency
    journal_entry_id: Uuid = Field(description=_JOURNAL_ENTRY)
    balance_after: Balance = Field(description=_BALANCE_AFTER)


class CashOutCompleted(BaseModel):
    """`cashout.completed`: amount and fee were debited from the wallet."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashout_id: Uuid
    wallet_account_id: Uuid
    amount: Amount
    currency: Currency
    fee: Fee
    journal_entry_id: Uuid = Field(description=_JOURNAL_ENTRY)
    balance_after: Balance = Field(description=_BALANCE_AFTER)


_AVAILABLE_AFTER = "The wallet's available balance (balance - held) after it, in minor units."


class CashOutHeld(BaseModel):
    """`cashout.held`: amount and fee are held on the wallet until the bank answers."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashout_id: Uuid
    wallet_account_id: Uuid
    amount: Amount
    currency: Currency
    fee: Fee
    hold_expires_at: Timestamp = Field(description="When an unanswered hold is voided (RFC 3339).")
    available_after: Balance = Field(description=_AVAILABLE_AFTER)


class CashOutVoided(BaseModel):
    """`cashout.voided`: a hold was released (returned by the bank, or expired); the money
    never left the wallet."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashout_id: Uuid
    wallet_account_id: Uuid
    amount: Amount
    currency: Currency
    fee: Fee
    reason: VoidReason
    available_after: Balance = Field(description=_AVAILABLE_AFTER)


class CashOutReversed(BaseModel):
    """`cashout.reversed`: a completed cash-out came back; amount and fee were credited again."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashout_id: Uuid
    wallet_account_id: Uuid
    amount: Amount
    currency: Currency
    fee: Fee
    journal_entry_id: Uuid = Field(description="The reversing journal entry.")
    balance_after: Balance = Field(description=_BALANCE_AFTER)


class OnboardingRejected(BaseModel):
    """`onboarding.rejected`: nothing was created."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    customer_id: Uuid
    reason: RejectReason
    detail: Detail


class CashInRejected(BaseModel):
    """`cashin.rejected`: the wallet was not credited."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashin_id: Uuid
    reason: RejectReason
    detail: Detail


class TransferRejected(BaseModel):
    """`transfer.rejected`: no money moved."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    transfer_id: Uuid
    reason: RejectReason
    detail: Detail


# The command types whose rejections share `cashout.rejected`. Topic names are spelled in
# contracts/topics.py alone, except here, where a type must list them: a registry test holds
# these equal to the command topics of the flows that share that rejected topic.
CashOutCommandType = Literal["cashout.approved", "cashout.settled", "cashout.returned"]


class CashOutRejected(BaseModel):
    """`cashout.rejected`: the command changed nothing (no money left the wallet)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashout_id: Uuid
    reason: RejectReason
    detail: Detail
    answers: CashOutCommandType | None = Field(
        default=None,
        description="The command type it answers: `cashout.settled` or `cashout.returned`; "
        "absent for `cashout.approved` (as in v1).",
    )


def bound_detail(detail: str) -> str:
    """`detail` cut to DETAIL_MAX_CHARS, marked with an ellipsis when cut."""
    if len(detail) <= DETAIL_MAX_CHARS:
        return detail
    return detail[: DETAIL_MAX_CHARS - 1] + "…"


class PaymentCompleted(BaseModel):
    """`payment.completed`: the payer paid; the merchant got amount - fee, fee revenue the fee."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    payment_id: Uuid
    from_account_id: Uuid
    merchant_account_id: Uuid
    amount: Amount
    fee: Fee = Field(description="min(amount, floor(amount x bps / 10,000) + fixed).")
    currency: Currency
    journal_entry_id: Uuid = Field(description=_JOURNAL_ENTRY)
    balance_after: Balance = Field(description="The payer's balance after it, in minor units.")


class PaymentRejected(BaseModel):
    """`payment.rejected`: no money moved."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    payment_id: Uuid
    reason: RejectReason
    detail: Detail


class RefundCompleted(BaseModel):
    """`refund.completed`: the payer got the amount back; the fee went back in proportion."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    refund_id: Uuid
    payment_id: Uuid
    merchant_account_id: Uuid
    to_account_id: Uuid = Field(description="The payer's wallet, credited.")
    amount: Amount
    fee_returned: Fee = Field(
        description="The share of the payment's fee this refund returned: floor(fee x "
        "refunded_total / payment amount), less what earlier refunds returned."
    )
    refunded_total: Amount = Field(
        description="The payment's refunds so far, this one included: at most its amount."
    )
    currency: Currency
    journal_entry_id: Uuid = Field(description=_JOURNAL_ENTRY)
    balance_after: Balance = Field(description="The merchant's balance after it, in minor units.")


class RefundRejected(BaseModel):
    """`refund.rejected`: nothing was refunded."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    refund_id: Uuid
    reason: RejectReason
    detail: Detail
