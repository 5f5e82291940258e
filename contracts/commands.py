"""Commands: what the API layer asks the ledger to do (imperative names), the `data` of a message.

Every command is frozen and ignores unknown fields, so a producer may add fields before the
consumers know them. The first field of each command is its idempotency key.
"""

from enum import StrEnum
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from ledgerflow.contracts.fields import PhoneNumber, Uuid
from ledgerflow.contracts.money import Amount, Currency, Fee

FULL_NAME_MAX_CHARS: Final = 200
NOTE_MAX_CHARS: Final = 140
BANK_REFERENCE_MAX_CHARS: Final = 128
# RFC 5321 caps a forward path at 256 octets including the angle brackets: 254 for the address.
EMAIL_MAX_CHARS: Final = 254
NATIONAL_ID_MAX_CHARS: Final = 64
# A BIC is 8 or 11 characters, a US routing number 9, a UK sort code 6 (8 with hyphens);
# 32 leaves room for any national scheme.
BANK_CODE_MAX_CHARS: Final = 32
# An IBAN is at most 34 characters, the longest account number format in use.
ACCOUNT_NUMBER_MAX_CHARS: Final = 34
# A hold lives at least a minute (a bank answers no faster) and at most 30 days.
HOLD_EXPIRES_IN_S_MIN: Final = 60
HOLD_EXPIRES_IN_S_MAX: Final = 2_592_000
# ISO 20022 return reason codes are 4 characters; 35 is the longest proprietary code field.
RETURN_CODE_MAX_CHARS: Final = 35
RETURN_DETAIL_MAX_CHARS: Final = 500
# A merchant's order or invoice number, and a refund's reason for the payer (DESIGN.md §5.2).
ORDER_REFERENCE_MAX_CHARS: Final = 64
REFUND_REASON_MAX_CHARS: Final = 140


class BankAccount(BaseModel):
    """A basic bank account, for cash-in and cash-out."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    bank_code: Annotated[
        str,
        StringConstraints(min_length=1, max_length=BANK_CODE_MAX_CHARS, pattern=r"^[A-Za-z0-9-]+$"),
    ] = Field(description="BIC, routing number, sort code or national bank code.")
    account_number: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=ACCOUNT_NUMBER_MAX_CHARS, pattern=r"^[A-Za-z0-9-]+$"
        ),
    ] = Field(description="IBAN or national account number, without spaces.")


class CustomerKind(StrEnum):
    """Who a wallet belongs to: a person, or a merchant that is paid (DESIGN.md §5.2)."""

    CONSUMER = "consumer"
    MERCHANT = "merchant"


def _consumer_as_absent(kind: CustomerKind | None) -> CustomerKind | None:
    # An explicit "consumer" is the default spelled out: it means what an absent field means,
    # so it must not change the content hash (a retry that spells it out is the same command).
    return None if kind is CustomerKind.CONSUMER else kind


class RequestOnboarding(BaseModel):
    """`onboarding.requested`: open a customer and the customer's wallet."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    customer_id: Uuid = Field(description="Idempotency key; also the message key.")
    full_name: Annotated[str, StringConstraints(min_length=1, max_length=FULL_NAME_MAX_CHARS)]
    phone_number: PhoneNumber = Field(description="E.164, e.g. +447911123456.")
    currency: Currency = Field(description="Currency of the new wallet.")
    email: (
        Annotated[
            str,
            StringConstraints(
                min_length=3, max_length=EMAIL_MAX_CHARS, pattern=r"^[^@\s]+@[^@\s]+$"
            ),
        ]
        | None
    ) = None
    national_id: (
        Annotated[str, StringConstraints(min_length=1, max_length=NATIONAL_ID_MAX_CHARS)] | None
    ) = None
    bank_account: BankAccount | None = Field(
        default=None, description="The basic bank account used for cash-in and cash-out."
    )
    # Absent means consumer (v1): None keeps the content hash of every v1 command as it was,
    # and an explicit "consumer" is read as absent for the same reason.
    kind: Annotated[CustomerKind | None, AfterValidator(_consumer_as_absent)] = Field(
        default=None,
        description="`consumer` (the default) or `merchant` (a wallet that payments pay into; "
        "its fee is set by operations, never by the requester).",
    )

    @property
    def customer_kind(self) -> CustomerKind:
        """The kind of the new customer: `consumer` when the field is absent."""
        return self.kind or CustomerKind.CONSUMER


class ConfirmCashIn(BaseModel):
    """`cashin.confirmed`: the bank confirmed money arrived for a wallet; credit it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashin_id: Uuid = Field(description="Idempotency key.")
    wallet_account_id: Uuid = Field(description="The wallet credited; the message key.")
    amount: Amount
    currency: Currency
    bank_reference: Annotated[
        str, StringConstraints(min_length=1, max_length=BANK_REFERENCE_MAX_CHARS)
    ] = Field(description="The bank's reference of the incoming payment.")


class InitiateTransfer(BaseModel):
    """`transfer.initiated`: move money from one wallet to another."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    transfer_id: Uuid = Field(description="Idempotency key.")
    from_account_id: Uuid = Field(description="The sender's wallet; the message key.")
    to_account_id: Uuid = Field(description="The receiver's wallet.")
    amount: Amount
    currency: Currency
    note: Annotated[str, StringConstraints(max_length=NOTE_MAX_CHARS)] | None = None


class Settlement(StrEnum):
    """When a cash-out's money leaves the wallet's balance."""

    IMMEDIATE = "immediate"  # at once, in one journal entry (v1)
    ON_CONFIRMATION = "on_confirmation"  # held until the bank settles or returns it


def _immediate_as_absent(settlement: Settlement | None) -> Settlement | None:
    # An explicit "immediate" is the default spelled out: it means what an absent field means,
    # so it must not change the content hash (a retry that spells it out is the same command).
    return None if settlement is Settlement.IMMEDIATE else settlement


class ApproveCashOut(BaseModel):
    """`cashout.approved`: pay money out of a wallet to a bank account."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashout_id: Uuid = Field(description="Idempotency key.")
    wallet_account_id: Uuid = Field(description="The wallet debited; the message key.")
    amount: Amount = Field(description="Paid out to the bank account, in minor units.")
    currency: Currency
    fee: Fee = Field(default=0, description="Debited on top of the amount, in minor units.")
    destination: BankAccount
    # Absent means immediate (v1): None keeps the content hash of every v1 command as it was,
    # and an explicit "immediate" is read as absent for the same reason.
    settlement: Annotated[Settlement | None, AfterValidator(_immediate_as_absent)] = Field(
        default=None,
        description="`immediate` (the default: debited at once) or `on_confirmation` (held "
        "until `cashout.settled` or `cashout.returned`, or voided when the hold expires).",
    )
    hold_expires_in_s: (
        Annotated[int, Field(ge=HOLD_EXPIRES_IN_S_MIN, le=HOLD_EXPIRES_IN_S_MAX, strict=True)]
        | None
    ) = Field(
        default=None,
        description="With `on_confirmation`: seconds until an unanswered hold is voided "
        "(default: the deployment's LEDGERFLOW_HOLD_EXPIRES_S, 259,200); ignored otherwise.",
    )

    @property
    def holds(self) -> bool:
        """True when the money is held until the bank answers (two-phase)."""
        return self.settlement is Settlement.ON_CONFIRMATION


class SettleCashOut(BaseModel):
    """`cashout.settled`: the bank paid a held cash-out out; post the hold."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashout_id: Uuid = Field(description="The held cash-out; idempotency key with the type.")
    wallet_account_id: Uuid = Field(description="The wallet it was held on; the message key.")
    bank_reference: Annotated[
        str, StringConstraints(min_length=1, max_length=BANK_REFERENCE_MAX_CHARS)
    ] = Field(description="The bank's reference of the outgoing payment.")


class ReturnCashOut(BaseModel):
    """`cashout.returned`: the bank did not pay a cash-out, or sent the money back."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cashout_id: Uuid = Field(description="The cash-out; idempotency key with the type.")
    wallet_account_id: Uuid = Field(description="The wallet it debited; the message key.")
    return_code: Annotated[
        str, StringConstraints(min_length=1, max_length=RETURN_CODE_MAX_CHARS)
    ] = Field(description="The bank's reason, e.g. an ISO 20022 code such as AC04.")
    detail: Annotated[str, StringConstraints(max_length=RETURN_DETAIL_MAX_CHARS)] | None = None


class InitiatePayment(BaseModel):
    """`payment.initiated`: a customer pays a merchant; the platform keeps the merchant's fee."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    payment_id: Uuid = Field(description="Idempotency key.")
    from_account_id: Uuid = Field(
        description="The payer's wallet, debited; the message key. The token must own it."
    )
    merchant_account_id: Uuid = Field(description="The merchant's wallet, credited.")
    amount: Amount = Field(description="What the payer pays, fee included, in minor units.")
    currency: Currency
    order_reference: (
        Annotated[str, StringConstraints(min_length=1, max_length=ORDER_REFERENCE_MAX_CHARS)] | None
    ) = Field(default=None, description="The merchant's order or invoice number.")


class RequestRefund(BaseModel):
    """`refund.requested`: a merchant gives back part or all of a payment."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    refund_id: Uuid = Field(description="Idempotency key.")
    payment_id: Uuid = Field(description="The payment refunded, made to this merchant.")
    merchant_account_id: Uuid = Field(
        description="The merchant's wallet, debited; the message key. The token must own it."
    )
    amount: Amount = Field(
        description="Given back to the payer, in minor units; the payment's refunds never sum "
        "above its amount."
    )
    currency: Currency
    reason: Annotated[str, StringConstraints(max_length=REFUND_REASON_MAX_CHARS)] | None = Field(
        default=None, description="Why, for the payer."
    )
