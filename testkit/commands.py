"""Builders of valid commands with sensible defaults, for tests here and in other teams."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING

from ledgerflow.contracts.codec import KafkaRecord, encode_command
from ledgerflow.contracts.commands import (
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
from ledgerflow.contracts.parsing import InvalidCommand, ValidCommand, parse_command
from ledgerflow.contracts.topics import (
    CASHIN,
    CASHOUT,
    CASHOUT_RETURN,
    CASHOUT_SETTLE,
    ONBOARDING,
    PAYMENT,
    REFUND,
    TRANSFER,
    Flow,
)
from ledgerflow.ledger_db.apply import BATCH_COMMANDS_MAX, Incoming, LedgerWriter, Outcome
from ledgerflow.ledger_db.rules import wallet_account_id

if TYPE_CHECKING:
    from pydantic import BaseModel

_phones = count(1)


def new_phone_number() -> str:
    """A distinct valid E.164 number per call (German mobile range)."""
    return f"+49151{next(_phones) + 10_000_000:08d}"


def onboarding(
    currency: str = "EUR", phone_number: str | None = None, customer_id: uuid.UUID | None = None
) -> RequestOnboarding:
    return RequestOnboarding(
        customer_id=customer_id or uuid.uuid4(),
        full_name="Test Customer",
        phone_number=phone_number or new_phone_number(),
        currency=currency,
    )


def wallet_of(command: RequestOnboarding) -> uuid.UUID:
    """The wallet account id onboarding will open (derived, so known before the result)."""
    return wallet_account_id(command.customer_id, command.currency)


def cashin(wallet: uuid.UUID, amount: int, currency: str = "EUR") -> ConfirmCashIn:
    return ConfirmCashIn(
        cashin_id=uuid.uuid4(),
        wallet_account_id=wallet,
        amount=amount,
        currency=currency,
        bank_reference="BANK-REF-1",
    )


def transfer(
    sender: uuid.UUID, receiver: uuid.UUID, amount: int, currency: str = "EUR"
) -> InitiateTransfer:
    return InitiateTransfer(
        transfer_id=uuid.uuid4(),
        from_account_id=sender,
        to_account_id=receiver,
        amount=amount,
        currency=currency,
    )


def cashout(wallet: uuid.UUID, amount: int, fee: int = 0, currency: str = "EUR") -> ApproveCashOut:
    return ApproveCashOut(
        cashout_id=uuid.uuid4(),
        wallet_account_id=wallet,
        amount=amount,
        currency=currency,
        fee=fee,
        destination=BankAccount(bank_code="BANKDEFF", account_number="DE89370400440532013000"),
    )


def held_cashout(
    wallet: uuid.UUID,
    amount: int,
    fee: int = 0,
    currency: str = "EUR",
    expires_in_s: int | None = None,
) -> ApproveCashOut:
    """A two-phase cash-out: held until `settle(...)` or `returned(...)`, or until it expires."""
    return cashout(wallet, amount, fee, currency).model_copy(
        update={"settlement": Settlement.ON_CONFIRMATION, "hold_expires_in_s": expires_in_s}
    )


def settle(approved: ApproveCashOut, bank_reference: str = "PAYOUT-REF-1") -> SettleCashOut:
    """The payout service's `cashout.settled` for a held cash-out."""
    return SettleCashOut(
        cashout_id=approved.cashout_id,
        wallet_account_id=approved.wallet_account_id,
        bank_reference=bank_reference,
    )


def returned(approved: ApproveCashOut, return_code: str = "AC04") -> ReturnCashOut:
    """The payout service's `cashout.returned`: before settling (void) or after (reversal)."""
    return ReturnCashOut(
        cashout_id=approved.cashout_id,
        wallet_account_id=approved.wallet_account_id,
        return_code=return_code,
    )


def merchant(currency: str = "EUR") -> RequestOnboarding:
    """Onboarding of a merchant: a wallet payments pay into (its fee set by operations)."""
    return onboarding(currency).model_copy(update={"kind": CustomerKind.MERCHANT})


def payment(
    payer: uuid.UUID, merchant_wallet: uuid.UUID, amount: int, currency: str = "EUR"
) -> InitiatePayment:
    return InitiatePayment(
        payment_id=uuid.uuid4(),
        from_account_id=payer,
        merchant_account_id=merchant_wallet,
        amount=amount,
        currency=currency,
        order_reference=f"ORDER-{next(_phones)}",
    )


def refund(paid: InitiatePayment, amount: int | None = None) -> RequestRefund:
    """A refund of `amount` (default: all) of a payment, requested by its merchant."""
    return RequestRefund(
        refund_id=uuid.uuid4(),
        payment_id=paid.payment_id,
        merchant_account_id=paid.merchant_account_id,
        amount=paid.amount if amount is None else amount,
        currency=paid.currency,
    )


def flow_of(command: BaseModel) -> Flow:
    match command:
        case RequestOnboarding():
            return ONBOARDING
        case ConfirmCashIn():
            return CASHIN
        case InitiateTransfer():
            return TRANSFER
        case ApproveCashOut():
            return CASHOUT
        case SettleCashOut():
            return CASHOUT_SETTLE
        case ReturnCashOut():
            return CASHOUT_RETURN
        case InitiatePayment():
            return PAYMENT
        case RequestRefund():
            return REFUND
    raise TypeError(type(command).__name__)


def record(command: BaseModel, **kwargs: object) -> KafkaRecord:
    """The Kafka record an upstream producer would send for `command`."""
    return encode_command(flow_of(command), command, **kwargs)  # type: ignore[arg-type]


@dataclass
class ConsumedRecord:
    """A record as a consumer hands it over (workers.records.Record), for tests without Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def parsed(command: BaseModel) -> ValidCommand:
    result = parse_command(flow_of(command), record(command).value)
    assert isinstance(result, ValidCommand), result
    return result


def parsed_invalid(flow: Flow, value: bytes) -> InvalidCommand:
    result = parse_command(flow, value)
    assert isinstance(result, InvalidCommand), result
    return result


async def apply_all(writer: LedgerWriter, *commands: BaseModel) -> list[Outcome]:
    """Apply valid commands as one batch, the way a worker would."""
    return await writer.apply([Incoming(parsed(c)) for c in commands])


async def open_funded_wallets(
    writer: LedgerWriter, wallets: int, amount: int, *, batch: int = BATCH_COMMANDS_MAX
) -> list[uuid.UUID]:
    """Open `wallets` wallets, then cash `amount` into each, in batches of `batch` as workers
    apply them; their account ids, in order."""
    people = [onboarding() for _ in range(wallets)]
    ids = [wallet_of(p) for p in people]
    for commands in (people, [cashin(w, amount) for w in ids]):
        for start in range(0, wallets, batch):
            await apply_all(writer, *commands[start : start + batch])
    return ids
