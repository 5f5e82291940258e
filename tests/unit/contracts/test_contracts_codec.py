"""Producer helpers: commands and result events as Kafka-ready bytes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from pydantic import ValidationError

from ledgerflow.contracts.codec import (
    KafkaRecord,
    decode_event,
    decode_result,
    encode_command,
    encode_event,
)
from ledgerflow.contracts.commands import ConfirmCashIn, InitiateTransfer
from ledgerflow.contracts.events import RejectReason, TransferCompleted, TransferRejected
from ledgerflow.contracts.parsing import ValidCommand, parse_command
from ledgerflow.contracts.topics import CASHIN, TRANSFER

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
