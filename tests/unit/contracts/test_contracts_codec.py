"""Producer helpers: commands and result events as Kafka-ready bytes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from ledgerflow.contracts.codec import (
    KafkaRecord,
    decode_event,
    decode_result,
    encode_command,
    encode_event,
)
from ledgerflow.contracts.commands import (
    ConfirmCashIn,
    CustomerKind,
    InitiatePayment,
    InitiateTransfer,
    RequestOnboarding,
    RequestRefund,
    SettleCashOut,
)
from ledgerflow.contracts.events import (
    CashOutHeld,
    CashOutRejected,
    CashOutReversed,
    CashOutVoided,
    OnboardingCompleted,
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
from ledgerflow.contracts.parsing import ValidCommand, parse_command
from ledgerflow.contracts.topics import (
    CASHIN,
    CASHOUT,
    CASHOUT_RETURN,
    CASHOUT_SETTLE,
    ONBOARDING,
    PAYMENT,
    REFUND,
    TRANSFER,
)

WHEN = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def transfer() -> InitiateTransfer:
    return InitiateTransfer(
        transfer_id=uuid.uuid4(),
        from_account_id=uuid.uuid4(),
        to_account_id=uuid.uuid4(),
        amount=12345,
        currency="EUR",
    )


def test_encode_command_record() -> None:
    command = transfer()
    record = encode_command(
        TRANSFER,
        command,
        event_id="evt-1",
        source="/api/p2p",
        correlation_id="corr-1",
        time=WHEN,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        authorization="Bearer eyJ.x.y",
        topic_prefix="staging.",
    )
    assert isinstance(record, KafkaRecord)
    assert record.topic == "staging.transfer.initiated"
    assert record.key == str(command.from_account_id).encode()
    assert record.headers == (
        ("content-type", b"application/cloudevents+json"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("authorization", b"Bearer eyJ.x.y"),
    )
    document = orjson.loads(record.value)
    assert document == {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/api/p2p",
        "type": "transfer.initiated",  # never prefixed
        "time": "2026-11-29T10:00:00Z",
        "datacontenttype": "application/json",
        "correlationid": "corr-1",
        "data": {
            "transfer_id": str(command.transfer_id),
            "from_account_id": str(command.from_account_id),
            "to_account_id": str(command.to_account_id),
            "amount": 12345,
            "currency": "EUR",
        },
    }
    parsed = parse_command(TRANSFER, record.value)
    assert isinstance(parsed, ValidCommand)
    assert parsed.data == command
    assert parsed.meta.correlation_id == "corr-1"


def test_encode_command_defaults() -> None:
    before = datetime.now(UTC)
    record = encode_command(
        CASHIN,
        ConfirmCashIn(
            cashin_id=uuid.uuid4(),
            wallet_account_id=uuid.uuid4(),
            amount=1,
            currency="KES",
            bank_reference="r",
        ),
    )
    assert record.headers == (("content-type", b"application/cloudevents+json"),)
    envelope = decode_event(record.value)
    assert uuid.UUID(envelope.id).version == 4
    assert envelope.source == "/ledgerflow/client"
    assert envelope.time is not None
    assert before <= envelope.time <= datetime.now(UTC)
    assert envelope.correlationid is None
    assert envelope.causationid is None


def test_encode_command_refuses_the_wrong_model_or_a_naive_time() -> None:
    with pytest.raises(TypeError):
        encode_command(CASHIN, transfer())
    with pytest.raises(ValueError, match="timezone-aware"):
        encode_command(TRANSFER, transfer(), time=datetime(2026, 1, 1))  # noqa: DTZ001


def test_encode_and_decode_result_events() -> None:
    completed = TransferCompleted(
        transfer_id=uuid.uuid4(),
        from_account_id=uuid.uuid4(),
        to_account_id=uuid.uuid4(),
        amount=10,
        currency="EUR",
        journal_entry_id=uuid.uuid4(),
        balance_after=0,
    )
    value = encode_event(
        TRANSFER.completed_topic,
        completed,
        event_id="res-1",
        source="/ledgerflow/ledger",
        causation_id="evt-1",
        correlation_id="corr-1",
        time=WHEN.astimezone(timezone(timedelta(hours=2))),
    )
    assert b"." not in orjson.dumps(orjson.loads(value)["data"]["amount"])  # no floats
    envelope = decode_result(TRANSFER, value)
    assert envelope.type == "transfer.completed"
    assert envelope.data == completed
    assert envelope.causationid == "evt-1"
    assert envelope.correlationid == "corr-1"
    assert envelope.time == WHEN
    untyped = decode_event(value)
    assert untyped.data["balance_after"] == 0

    rejected = TRANSFER.rejected(completed.transfer_id, RejectReason.INSUFFICIENT_FUNDS, "no")
    value = encode_event(
        TRANSFER.rejected_topic,
        rejected,
        event_id="res-2",
        source="/ledgerflow/ledger",
        causation_id=None,
        correlation_id=None,
        time=WHEN,
    )
    assert b"causationid" not in value  # absent, not null
    envelope = decode_result(TRANSFER, value)
    assert isinstance(envelope.data, TransferRejected)
    assert envelope.data.reason is RejectReason.INSUFFICIENT_FUNDS


def test_decode_result_refuses_other_types() -> None:
    value = encode_command(TRANSFER, transfer()).value
    with pytest.raises(ValueError, match="not a result of transfer"):
        decode_result(TRANSFER, value)
    with pytest.raises(ValueError, match="not a result of cashin"):
        decode_result(
            CASHIN,
            encode_event(
                TRANSFER.rejected_topic,
                TRANSFER.rejected(uuid.uuid4(), RejectReason.SAME_ACCOUNT, "x"),
                event_id="e",
                source="/s",
                causation_id=None,
                correlation_id=None,
                time=WHEN,
            ),
        )
    with pytest.raises(ValidationError):
        decode_event(b'{"specversion": "1.0"}')


def _event(topic: str, data: BaseModel) -> bytes:
    return encode_event(
        topic,
        data,
        event_id="e",
        source="/ledgerflow/ledger",
        causation_id="c",
        correlation_id="k",
        time=WHEN,
    )


def test_second_phase_command_is_keyed_by_the_wallet() -> None:
    command = SettleCashOut(
        cashout_id=uuid.uuid4(), wallet_account_id=uuid.uuid4(), bank_reference="SEPA-1"
    )
    record = encode_command(CASHOUT_SETTLE, command)
    assert record.topic == "cashout.settled"
    assert record.key == str(command.wallet_account_id).encode()
    assert orjson.loads(record.value)["type"] == "cashout.settled"


def test_decode_result_reads_every_lifecycle_result() -> None:
    cashout_id, wallet = uuid.uuid4(), uuid.uuid4()
    money = {"cashout_id": cashout_id, "wallet_account_id": wallet, "amount": 5, "currency": "EUR"}
    held = CashOutHeld(**money, fee=1, hold_expires_at=WHEN, available_after=0)
    expired = CashOutVoided(**money, fee=1, reason=VoidReason.EXPIRED, available_after=6)
    returned = CashOutVoided(**money, fee=1, reason=VoidReason.RETURNED, available_after=6)
    reversed_ = CashOutReversed(**money, fee=1, journal_entry_id=uuid.uuid4(), balance_after=6)
    for flow, topic, data in (
        (CASHOUT, "cashout.held", held),
        (CASHOUT, "cashout.voided", expired),
        (CASHOUT_RETURN, "cashout.voided", returned),
        (CASHOUT_RETURN, "cashout.reversed", reversed_),
    ):
        envelope = decode_result(flow, _event(topic, data))
        assert envelope.type == topic
        assert envelope.data == data
    held_document = orjson.loads(_event("cashout.held", held))
    assert held_document["data"]["hold_expires_at"] == "2026-11-29T10:00:00Z"
    # A result of one flow is not a result of another.
    with pytest.raises(ValueError, match="not a result of cashout_settle"):
        decode_result(CASHOUT_SETTLE, _event("cashout.reversed", reversed_))
    with pytest.raises(ValueError, match="not a result of cashout_return"):
        decode_result(CASHOUT_RETURN, _event("cashout.held", held))


def test_a_shared_rejected_topic_says_what_it_answers() -> None:
    cashout_id = uuid.uuid4()
    rejected = CASHOUT_RETURN.rejected(cashout_id, RejectReason.ALREADY_VOIDED, "voided")
    document = orjson.loads(_event("cashout.rejected", rejected))
    assert document["data"]["answers"] == "cashout.returned"
    envelope = decode_result(CASHOUT, _event("cashout.rejected", rejected))
    assert isinstance(envelope.data, CashOutRejected)
    assert envelope.data.answers == "cashout.returned"
    v1 = CASHOUT.rejected(cashout_id, RejectReason.INSUFFICIENT_FUNDS, "no")
    assert "answers" not in orjson.loads(_event("cashout.rejected", v1))["data"]


# --- Merchants, payments and refunds (DESIGN.md §5.2) ---


def test_payment_is_keyed_by_the_payer_and_refund_by_the_merchant() -> None:
    payer, merchant, payment_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    payment = InitiatePayment(
        payment_id=payment_id,
        from_account_id=payer,
        merchant_account_id=merchant,
        amount=10_000,
        currency="EUR",
    )
    record = encode_command(PAYMENT, payment, topic_prefix="prod.")
    assert record.topic == "prod.payment.initiated"
    assert record.key == str(payer).encode()
    document = orjson.loads(record.value)
    assert document["type"] == "payment.initiated"
    assert "order_reference" not in document["data"]  # absent, not null
    refund = RequestRefund(
        refund_id=uuid.uuid4(),
        payment_id=payment_id,
        merchant_account_id=merchant,
        amount=3_333,
        currency="EUR",
    )
    record = encode_command(REFUND, refund)
    assert record.topic == "refund.requested"
    assert record.key == str(merchant).encode()
    assert "reason" not in orjson.loads(record.value)["data"]
    with pytest.raises(TypeError):
        encode_command(PAYMENT, refund)
    with pytest.raises(TypeError):
        encode_command(TRANSFER, payment)


def test_decode_result_reads_the_merchant_results() -> None:
    payer, merchant, payment_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    paid = PaymentCompleted(
        payment_id=payment_id,
        from_account_id=payer,
        merchant_account_id=merchant,
        amount=10_000,
        fee=180,
        currency="EUR",
        journal_entry_id=uuid.uuid4(),
        balance_after=40_000,
    )
    refunded = RefundCompleted(
        refund_id=uuid.uuid4(),
        payment_id=payment_id,
        merchant_account_id=merchant,
        to_account_id=payer,
        amount=3_333,
        fee_returned=59,
        refunded_total=3_333,
        currency="EUR",
        journal_entry_id=uuid.uuid4(),
        balance_after=106_546,
    )
    not_a_merchant = PAYMENT.rejected(payment_id, RejectReason.NOT_A_MERCHANT, "consumer")
    too_much = REFUND.rejected(refunded.refund_id, RejectReason.REFUND_EXCEEDS_PAYMENT, "6667")
    for flow, topic, data, model in (
        (PAYMENT, "payment.completed", paid, PaymentCompleted),
        (PAYMENT, "payment.rejected", not_a_merchant, PaymentRejected),
        (REFUND, "refund.completed", refunded, RefundCompleted),
        (REFUND, "refund.rejected", too_much, RefundRejected),
    ):
        envelope = decode_result(flow, _event(topic, data))
        assert envelope.type == topic
        assert type(envelope.data) is model
        assert envelope.data == data
    document = orjson.loads(_event("refund.completed", refunded))["data"]
    assert (document["fee_returned"], document["refunded_total"]) == (59, 3_333)
    assert "answers" not in orjson.loads(_event("payment.rejected", not_a_merchant))["data"]
    # A result of one flow is not a result of another, nor of a transfer.
    with pytest.raises(ValueError, match="not a result of payment"):
        decode_result(PAYMENT, _event("refund.completed", refunded))
    with pytest.raises(ValueError, match="not a result of transfer"):
        decode_result(TRANSFER, _event("payment.completed", paid))


def test_onboarding_kind_on_the_wire() -> None:
    customer_id = uuid.uuid4()
    v1 = RequestOnboarding(
        customer_id=customer_id, full_name="A", phone_number="+447911123456", currency="GBP"
    )
    assert "kind" not in orjson.loads(encode_command(ONBOARDING, v1).value)["data"]
    spelled = RequestOnboarding(
        customer_id=customer_id,
        full_name="A",
        phone_number="+447911123456",
        currency="GBP",
        kind=CustomerKind.CONSUMER,
    )
    assert "kind" not in orjson.loads(encode_command(ONBOARDING, spelled).value)["data"]
    merchant = RequestOnboarding.model_validate(v1.model_dump() | {"kind": "merchant"})
    data = orjson.loads(encode_command(ONBOARDING, merchant).value)["data"]
    assert data["kind"] == "merchant"
    completed = OnboardingCompleted(
        customer_id=customer_id, wallet_account_id=uuid.uuid4(), currency="GBP", tier=Tier.BASIC
    )
    # The result always says which kind it opened, a consumer included.
    assert orjson.loads(_event("onboarding.completed", completed))["data"]["kind"] == "consumer"
    # An event published before contract 1.2 has no kind: it reads as a consumer.
    old = orjson.loads(_event("onboarding.completed", completed))
    del old["data"]["kind"]
    envelope = decode_result(ONBOARDING, orjson.dumps(old))
    assert isinstance(envelope.data, OnboardingCompleted)
    assert envelope.data.kind is CustomerKind.CONSUMER
