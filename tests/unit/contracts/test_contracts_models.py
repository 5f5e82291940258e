"""Money, field types and models: strict where the wire contract says so."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from ledgerflow.contracts.commands import (
    HOLD_EXPIRES_IN_S_MAX,
    HOLD_EXPIRES_IN_S_MIN,
    ORDER_REFERENCE_MAX_CHARS,
    REFUND_REASON_MAX_CHARS,
    ApproveCashOut,
    BankAccount,
    CustomerKind,
    InitiatePayment,
    InitiateTransfer,
    RequestOnboarding,
    RequestRefund,
    ReturnCashOut,
    SettleCashOut,
    Settlement,
)
from ledgerflow.contracts.envelope import CONTENT_TYPE, SPECVERSION, Envelope
from ledgerflow.contracts.events import (
    DETAIL_MAX_CHARS,
    CashOutHeld,
    CashOutRejected,
    CashOutReversed,
    CashOutVoided,
    OnboardingCompleted,
    PaymentCompleted,
    RefundCompleted,
    RejectReason,
    Tier,
    VoidReason,
    bound_detail,
)
from ledgerflow.contracts.fields import Timestamp, Uuid
from ledgerflow.contracts.money import CURRENCIES, MAX_AMOUNT, Amount, Currency, Fee, is_currency

AMOUNT: TypeAdapter[int] = TypeAdapter(Amount)
FEE: TypeAdapter[int] = TypeAdapter(Fee)
CURRENCY: TypeAdapter[str] = TypeAdapter(Currency)
UUIDS: TypeAdapter[uuid.UUID] = TypeAdapter(Uuid)
TIMES: TypeAdapter[datetime] = TypeAdapter(Timestamp)


def test_constants() -> None:
    assert MAX_AMOUNT == 10**15
    assert SPECVERSION == "1.0"
    assert CONTENT_TYPE == "application/cloudevents+json"


@pytest.mark.parametrize("good", [1, 100, MAX_AMOUNT])
def test_amount_accepts_integers_in_range(good: int) -> None:
    assert AMOUNT.validate_python(good) == good
    assert AMOUNT.validate_json(str(good)) == good


@pytest.mark.parametrize(
    "bad",
    [
        "100",
        100.0,
        1.5,
        True,
        False,
        None,
        0,
        -1,
        MAX_AMOUNT + 1,
        float("nan"),
        pytest.param(10**5000, id="10**5000"),
    ],
)
def test_amount_rejects(bad: Any) -> None:
    with pytest.raises(ValidationError):
        AMOUNT.validate_python(bad)


@pytest.mark.parametrize("bad", ['"100"', "100.0", "true", "NaN", "1e3", "9" * 5000])
def test_amount_rejects_json(bad: str) -> None:
    with pytest.raises(ValidationError):
        AMOUNT.validate_json(bad)


def test_fee_allows_zero() -> None:
    assert FEE.validate_python(0) == 0
    with pytest.raises(ValidationError):
        FEE.validate_python(-1)
    with pytest.raises(ValidationError):
        FEE.validate_python("0")


def test_currency_list_is_real_iso_4217() -> None:
    assert {
        "EUR",
        "USD",
        "GBP",
        "KES",
        "NGN",
        "JPY",
        "CHF",
        "XOF",
        "ZWG",
        "XCG",
        "SLE",
    } <= CURRENCIES
    # withdrawn codes are not active any more
    assert not {"HRK", "DEM", "FRF", "ANG", "SLL", "ZWL", "CUC", "VEF"} & CURRENCIES
    assert all(len(c) == 3 and c.isupper() for c in CURRENCIES)
    assert 150 < len(CURRENCIES) < 200


@pytest.mark.parametrize("good", ["EUR", "USD", "KES"])
def test_currency_accepts(good: str) -> None:
    assert is_currency(good)
    assert CURRENCY.validate_python(good) == good


@pytest.mark.parametrize("bad", ["eur", "Eur", "EURO", "EU", "ABC", "", " EUR", 978, None])
def test_currency_rejects(bad: Any) -> None:
    assert not is_currency(bad)
    with pytest.raises(ValidationError) as caught:
        CURRENCY.validate_python(bad)
    (error,) = caught.value.errors()
    assert error["msg"] == "Input should be an active ISO 4217 currency code in upper case"


def test_uuid_accepts_only_the_hyphenated_form() -> None:
    value = uuid.uuid4()
    assert UUIDS.validate_python(str(value)) == value
    assert UUIDS.validate_python(str(value).upper()) == value
    assert UUIDS.validate_python(value) == value
    for bad in (value.hex, f"{{{value}}}", value.urn, "x" * 36, 5, value.bytes):
        with pytest.raises(ValidationError):
            UUIDS.validate_python(bad)


def test_timestamp_needs_rfc3339_with_offset() -> None:
    assert TIMES.validate_python("2026-11-29T10:00:00Z") == datetime(2026, 11, 29, 10, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    assert TIMES.validate_python("2026-11-29T12:00:00.5+02:00") == datetime(
        2026, 11, 29, 12, 0, 0, 500000, tzinfo=plus_two
    )
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    assert TIMES.validate_python(aware) == aware
    for bad in (
        "2026-11-29",
        "2026-11-29T10:00:00",
        "2026-11-29 10:00:00Z",
        "1700000000",
        1700000000,
        "2026-13-01T00:00:00Z",
        datetime(2026, 1, 1),  # noqa: DTZ001 - the naive datetime under test
    ):
        with pytest.raises(ValidationError):
            TIMES.validate_python(bad)


@pytest.mark.parametrize("phone", ["+447911123456", "+14155552671", "+254712345678"])
def test_phone_numbers_valid(phone: str) -> None:
    command = RequestOnboarding(
        customer_id=uuid.uuid4(), full_name="A", phone_number=phone, currency="EUR"
    )
    assert command.phone_number == phone


@pytest.mark.parametrize(
    "phone", ["07911123456", "+44 7911 123456", "447911123456", "+10000000000", "+0123", ""]
)
def test_phone_numbers_invalid(phone: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RequestOnboarding(
            customer_id=uuid.uuid4(), full_name="A", phone_number=phone, currency="EUR"
        )
    messages = " ".join(e["msg"] for e in caught.value.errors())
    assert not phone or phone not in messages  # personal data is never echoed


def test_models_are_frozen_and_ignore_unknown_fields() -> None:
    data = {
        "transfer_id": str(uuid.uuid4()),
        "from_account_id": str(uuid.uuid4()),
        "to_account_id": str(uuid.uuid4()),
        "amount": 1,
        "currency": "EUR",
        "surprise": True,
    }
    command = InitiateTransfer.model_validate(data)
    assert not hasattr(command, "surprise")
    with pytest.raises(ValidationError):
        command.amount = 2  # type: ignore[misc]


def test_bank_account_bounds() -> None:
    BankAccount(bank_code="NWBKGB2L", account_number="GB29NWBK60161331926819")
    for code, number in (("", "1"), ("1", ""), ("A" * 33, "1"), ("1", "1" * 35), ("1 2", "1")):
        with pytest.raises(ValidationError):
            BankAccount(bank_code=code, account_number=number)


def test_envelope_defaults_and_unknown_attributes() -> None:
    envelope = Envelope[dict[str, Any]].model_validate(
        {"specversion": "1.0", "id": "a", "source": "/s", "type": "t", "data": {}, "other": 1}
    )
    assert envelope.datacontenttype == "application/json"
    assert envelope.time is None
    assert envelope.causationid is None
    assert not hasattr(envelope, "other")
    for bad in ({"id": ""}, {"id": "x" * 257}, {"source": ""}, {"specversion": "1.1"}):
        with pytest.raises(ValidationError):
            Envelope[dict[str, Any]].model_validate(
                {"specversion": "1.0", "id": "a", "source": "/s", "type": "t", "data": {}} | bad
            )


def test_reason_codes_are_the_design_codes() -> None:
    assert [r.value for r in RejectReason] == [
        "invalid_command",
        "account_not_found",
        "account_closed",
        "same_account",
        "currency_mismatch",
        "insufficient_funds",
        "limit_exceeded",
        "phone_number_taken",
        "id_conflict",
        "unauthorized",
        # DESIGN.md §5.1, appended: the v1 codes keep their places.
        "hold_not_found",
        "hold_expired",
        "already_settled",
        "already_voided",
        "already_reversed",
        # DESIGN.md §5.2, appended after them.
        "not_a_merchant",
        "payment_not_found",
        "refund_exceeds_payment",
    ]
    assert [t.value for t in Tier] == ["basic", "standard", "full"]
    assert [k.value for k in CustomerKind] == ["consumer", "merchant"]
    assert [r.value for r in VoidReason] == ["returned", "expired"]
    assert [s.value for s in Settlement] == ["immediate", "on_confirmation"]


def test_bound_detail() -> None:
    assert bound_detail("short") == "short"
    cut = bound_detail("x" * 5000)
    assert len(cut) == DETAIL_MAX_CHARS
    assert cut.endswith("…")


CASH_OUT = {
    "cashout_id": str(uuid.uuid4()),
    "wallet_account_id": str(uuid.uuid4()),
    "amount": 50000,
    "currency": "EUR",
    "fee": 150,
    "destination": {"bank_code": "DEUTDEFF", "account_number": "DE89370400440532013000"},
}


def test_hold_expiry_bounds() -> None:
    assert (HOLD_EXPIRES_IN_S_MIN, HOLD_EXPIRES_IN_S_MAX) == (60, 30 * 24 * 3600)
    for good in (60, 259_200, 2_592_000):
        command = ApproveCashOut.model_validate(
            CASH_OUT | {"settlement": "on_confirmation", "hold_expires_in_s": good}
        )
        assert command.hold_expires_in_s == good
        assert command.holds
    for bad in (59, 2_592_001, 0, -60, "3600", 3600.0, True, 3600.5):
        with pytest.raises(ValidationError):
            ApproveCashOut.model_validate(CASH_OUT | {"hold_expires_in_s": bad})


def test_settlement_values() -> None:
    assert not ApproveCashOut.model_validate(CASH_OUT).holds
    immediate = ApproveCashOut.model_validate(CASH_OUT | {"settlement": "immediate"})
    assert immediate.settlement is None  # the default spelled out reads as absent
    assert not immediate.holds
    held = ApproveCashOut.model_validate(CASH_OUT | {"settlement": "on_confirmation"})
    assert held.settlement is Settlement.ON_CONFIRMATION
    for bad in ("later", "ON_CONFIRMATION", "", 1, True):
        with pytest.raises(ValidationError):
            ApproveCashOut.model_validate(CASH_OUT | {"settlement": bad})


def test_second_phase_command_bounds() -> None:
    ids = {"cashout_id": str(uuid.uuid4()), "wallet_account_id": str(uuid.uuid4())}
    assert SettleCashOut.model_validate(ids | {"bank_reference": "r" * 128})
    for bad in ("", "r" * 129, None, 5):
        with pytest.raises(ValidationError):
            SettleCashOut.model_validate(ids | {"bank_reference": bad})
    returned = ReturnCashOut.model_validate(ids | {"return_code": "AC04"})
    assert returned.detail is None
    assert ReturnCashOut.model_validate(ids | {"return_code": "X" * 35, "detail": "d" * 500})
    for changes in (
        {"return_code": ""},
        {"return_code": "X" * 36},
        {"return_code": None},
        {"return_code": "AC04", "detail": "d" * 501},
        {},
    ):
        with pytest.raises(ValidationError):
            ReturnCashOut.model_validate(ids | changes)
    with pytest.raises(ValidationError):
        SettleCashOut.model_validate({"cashout_id": ids["cashout_id"], "bank_reference": "r"})


def test_lifecycle_results() -> None:
    common = {
        "cashout_id": str(uuid.uuid4()),
        "wallet_account_id": str(uuid.uuid4()),
        "amount": 50000,
        "currency": "EUR",
        "fee": 0,
    }
    held = CashOutHeld.model_validate(
        common | {"hold_expires_at": "2026-11-30T10:00:00Z", "available_after": 0}
    )
    assert held.hold_expires_at == datetime(2026, 11, 30, 10, tzinfo=UTC)
    # The expiry is an RFC 3339 timestamp with an offset, as the JSON Schema says: no Unix
    # seconds, no naive time.
    for bad in ("2026-11-30T10:00:00", 1796032800, "2026-11-30"):
        with pytest.raises(ValidationError):
            CashOutHeld.model_validate(common | {"hold_expires_at": bad, "available_after": 0})
    with pytest.raises(ValidationError):
        CashOutHeld.model_validate(
            common | {"hold_expires_at": "2026-11-30T10:00:00Z", "available_after": -1}
        )
    for reason in VoidReason:
        voided = CashOutVoided.model_validate(common | {"reason": reason, "available_after": 1})
        assert voided.reason is reason
    with pytest.raises(ValidationError):
        CashOutVoided.model_validate(common | {"reason": "cancelled", "available_after": 1})
    reversed_ = CashOutReversed.model_validate(
        common | {"journal_entry_id": str(uuid.uuid4()), "balance_after": 50000}
    )
    assert reversed_.fee == 0
    for amount in (0, "1", 1.0):
        with pytest.raises(ValidationError):
            CashOutReversed.model_validate(
                common
                | {"amount": amount, "journal_entry_id": str(uuid.uuid4()), "balance_after": 0}
            )


def test_rejection_answers() -> None:
    base = {"cashout_id": str(uuid.uuid4()), "reason": "hold_not_found", "detail": ""}
    assert CashOutRejected.model_validate(base).answers is None
    for answers in ("cashout.approved", "cashout.settled", "cashout.returned"):
        assert CashOutRejected.model_validate(base | {"answers": answers}).answers == answers
    for bad in ("cashout.completed", "transfer.initiated", "CASHOUT.SETTLED", ""):
        with pytest.raises(ValidationError):
            CashOutRejected.model_validate(base | {"answers": bad})


# --- Merchants, payments and refunds (DESIGN.md §5.2) ---

ONBOARDING_DATA = {
    "customer_id": str(uuid.uuid4()),
    "full_name": "Corner Bakery Ltd",
    "phone_number": "+442079460958",
    "currency": "EUR",
}


def test_onboarding_kind() -> None:
    v1 = RequestOnboarding.model_validate(ONBOARDING_DATA)
    assert v1.kind is None
    assert v1.customer_kind is CustomerKind.CONSUMER
    consumer = RequestOnboarding.model_validate(ONBOARDING_DATA | {"kind": "consumer"})
    assert consumer.kind is None  # the default spelled out reads as absent
    assert consumer == v1
    assert consumer.customer_kind is CustomerKind.CONSUMER
    merchant = RequestOnboarding.model_validate(ONBOARDING_DATA | {"kind": "merchant"})
    assert merchant.kind is CustomerKind.MERCHANT
    assert merchant.customer_kind is CustomerKind.MERCHANT
    assert RequestOnboarding.model_validate(ONBOARDING_DATA | {"kind": None}) == v1
    for bad in ("business", "MERCHANT", "Merchant", "", 1, True):
        with pytest.raises(ValidationError):
            RequestOnboarding.model_validate(ONBOARDING_DATA | {"kind": bad})


def test_onboarding_completed_kind_defaults_to_consumer() -> None:
    common = {
        "customer_id": str(uuid.uuid4()),
        "wallet_account_id": str(uuid.uuid4()),
        "currency": "EUR",
        "tier": "basic",
    }
    v1 = OnboardingCompleted.model_validate(common)  # as published before contract 1.2
    assert v1.kind is CustomerKind.CONSUMER
    assert v1.model_dump(mode="json")["kind"] == "consumer"  # always on the wire from now on
    merchant = OnboardingCompleted.model_validate(common | {"kind": "merchant"})
    assert merchant.kind is CustomerKind.MERCHANT
    with pytest.raises(ValidationError):
        OnboardingCompleted.model_validate(common | {"kind": "business"})


PAYMENT_DATA = {
    "payment_id": str(uuid.uuid4()),
    "from_account_id": str(uuid.uuid4()),
    "merchant_account_id": str(uuid.uuid4()),
    "amount": 10_000,
    "currency": "EUR",
}


def test_payment_command_bounds() -> None:
    assert ORDER_REFERENCE_MAX_CHARS == 64
    payment = InitiatePayment.model_validate(PAYMENT_DATA)
    assert payment.order_reference is None
    assert InitiatePayment.model_validate(PAYMENT_DATA | {"order_reference": "R" * 64})
    assert InitiatePayment.model_validate(PAYMENT_DATA | {"amount": MAX_AMOUNT})
    for changes in (
        {"order_reference": "R" * 65},
        {"order_reference": ""},
        {"order_reference": 42},
        {"amount": 0},
        {"amount": "10000"},
        {"amount": 100.0},
        {"merchant_account_id": "merchant-42"},
        {"currency": "eur"},
    ):
        with pytest.raises(ValidationError):
            InitiatePayment.model_validate(PAYMENT_DATA | changes)
    for missing in ("payment_id", "from_account_id", "merchant_account_id", "amount", "currency"):
        with pytest.raises(ValidationError):
            InitiatePayment.model_validate({k: v for k, v in PAYMENT_DATA.items() if k != missing})


REFUND_DATA = {
    "refund_id": str(uuid.uuid4()),
    "payment_id": PAYMENT_DATA["payment_id"],
    "merchant_account_id": PAYMENT_DATA["merchant_account_id"],
    "amount": 3_333,
    "currency": "EUR",
}


def test_refund_command_bounds() -> None:
    assert REFUND_REASON_MAX_CHARS == 140
    refund = RequestRefund.model_validate(REFUND_DATA)
    assert refund.reason is None
    assert RequestRefund.model_validate(REFUND_DATA | {"reason": "r" * 140})
    assert RequestRefund.model_validate(REFUND_DATA | {"reason": ""}).reason == ""  # like `note`
    for changes in (
        {"reason": "r" * 141},
        {"amount": 0},
        {"amount": -1},
        {"amount": 33.33},
        {"payment_id": "ORDER-2026-000042"},
    ):
        with pytest.raises(ValidationError):
            RequestRefund.model_validate(REFUND_DATA | changes)
    for missing in ("refund_id", "payment_id", "merchant_account_id", "amount", "currency"):
        with pytest.raises(ValidationError):
            RequestRefund.model_validate({k: v for k, v in REFUND_DATA.items() if k != missing})


def test_merchant_results() -> None:
    paid = PaymentCompleted.model_validate(
        PAYMENT_DATA | {"fee": 180, "journal_entry_id": str(uuid.uuid4()), "balance_after": 40_000}
    )
    assert paid.fee == 180
    # The fee may be the whole amount (min(amount, ...)): the merchant then gets nothing.
    assert PaymentCompleted.model_validate(paid.model_dump() | {"amount": 20, "fee": 20})
    for bad in (-1, "180", None):
        with pytest.raises(ValidationError):
            PaymentCompleted.model_validate(paid.model_dump() | {"fee": bad})
    refunded = RefundCompleted.model_validate(
        REFUND_DATA
        | {
            "to_account_id": PAYMENT_DATA["from_account_id"],
            "fee_returned": 59,
            "refunded_total": 3_333,
            "journal_entry_id": str(uuid.uuid4()),
            "balance_after": 106_546,
        }
    )
    assert (refunded.fee_returned, refunded.refunded_total) == (59, 3_333)
    assert RefundCompleted.model_validate(refunded.model_dump() | {"fee_returned": 0})
    for changes in (
        {"refunded_total": 0},  # it includes this refund: at least 1
        {"refunded_total": MAX_AMOUNT + 1},  # at most the payment's amount
        {"fee_returned": -1},
        {"balance_after": -1},
        {"amount": 0},
    ):
        with pytest.raises(ValidationError):
            RefundCompleted.model_validate(refunded.model_dump() | changes)
