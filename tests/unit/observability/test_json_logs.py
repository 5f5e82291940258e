"""JSON log lines: fields, scrubbing of secrets, masking of personal-data fields."""

from __future__ import annotations

import io
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from ledgerflow.contracts.topics import TRANSFER
from ledgerflow.ledger_db.apply import Incoming, Outcome, OutcomeKind
from ledgerflow.testkit.commands import parsed, transfer
from ledgerflow.workers import logging as json_logs

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def lines() -> Iterator[list[dict[str, Any]]]:
    """Configure JSON logging into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("aiokafka").level)
    json_logs.configure("test-service", level="DEBUG")
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(io.StringIO())
    try:
        yield []
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("aiokafka").setLevel(saved[2])


def flush(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = handler.stream
    lines[:] = [json.loads(line) for line in stream.getvalue().splitlines()]
    return lines


def test_a_line_is_one_json_object_with_the_standard_fields(lines: list[dict[str, Any]]) -> None:
    logging.getLogger("ledgerflow.test").info("hello %s", "world", extra={"flow": "transfer"})
    [line] = flush(lines)
    assert line["msg"] == "hello world"
    assert line["level"] == "info"
    assert line["logger"] == "ledgerflow.test"
    assert line["service"] == "test-service"
    assert line["flow"] == "transfer"
    assert line["ts"].endswith("+00:00")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connect to postgresql://app:s3cr3tPw@db:5432/ledger failed", "s3cr3tPw"),
        ("connect to postgresql://db:5432/ledger failed", "db:5432/ledger"),
        ("dsn host=db user=app password=s3cr3tPw dbname=x", "s3cr3tPw"),
        ("header Authorization: Bearer abc.def-ghi_123", "abc.def-ghi_123"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl seen", "c2lnbmF0dXJl"),
        ("amqp://guest:guestpw@rabbit/", "guestpw"),
        ("api_key=AKIA1234567890", "AKIA1234567890"),
    ],
)
def test_secrets_are_scrubbed_from_messages(
    lines: list[dict[str, Any]], text: str, secret: str
) -> None:
    logging.getLogger("ledgerflow.test").warning(text)
    [line] = flush(lines)
    assert secret not in json.dumps(line)
    assert json_logs.MASK in line["msg"]


def test_fields_named_like_personal_data_or_secrets_are_masked(
    lines: list[dict[str, Any]],
) -> None:
    logging.getLogger("ledgerflow.test").info(
        "oops",
        extra={
            "full_name": "Ada Lovelace",
            "phone_number": "+4915100000000",
            "national_id": "X123",
            "account_number": "DE02",
            "database_url": "whatever",
            "authorization": "Bearer x",
            "idempotency_key": "5f0c1a4e-8f7d-4a39-9d0c-0d6f5d2b7c11",
        },
    )
    [line] = flush(lines)
    for key in ("full_name", "phone_number", "national_id", "account_number", "database_url"):
        assert line[key] == json_logs.MASK
    assert line["authorization"] == json_logs.MASK
    assert line["idempotency_key"] == "5f0c1a4e-8f7d-4a39-9d0c-0d6f5d2b7c11"


def test_exceptions_carry_their_class_and_a_scrubbed_traceback(
    lines: list[dict[str, Any]],
) -> None:
    def connect() -> None:
        raise ConnectionError("postgresql://app:s3cr3tPw@db/ledger refused")

    try:
        connect()
    except ConnectionError:
        logging.getLogger("ledgerflow.test").exception("connect failed")
    [line] = flush(lines)
    assert line["error_class"] == "ConnectionError"
    assert "Traceback" in line["exc"]
    assert "s3cr3tPw" not in line["exc"]


def test_aiokafka_is_never_below_info(lines: list[dict[str, Any]]) -> None:
    """Its DEBUG lines dump whole records (personal data, tokens)."""
    assert logging.getLogger().level == logging.DEBUG
    logging.getLogger("aiokafka.producer.producer").debug("Sending (key=b'k' value=b'secret')")
    assert flush(lines) == []


def test_each_decided_command_gets_a_line_with_ids_and_outcome(
    lines: list[dict[str, Any]],
) -> None:
    command = parsed(transfer(uuid.uuid4(), uuid.uuid4(), 100))
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    outcome = Outcome(
        "transfer",
        command.idempotency_key,
        OutcomeKind.REJECTED,
        "insufficient_funds",
        str(uuid.uuid4()),
        "transfer.rejected",
    )
    json_logs.log_outcomes(TRANSFER, [Incoming(command, traceparent)], [outcome])
    [line] = flush(lines)
    assert line["msg"] == "command decided"
    assert line["logger"] == json_logs.COMMANDS_LOGGER
    assert line["flow"] == "transfer"
    assert line["command_id"] == command.meta.event_id
    assert line["correlation_id"] == command.meta.correlation_id
    assert line["idempotency_key"] == command.idempotency_key
    assert line["outcome"] == "rejected"
    assert line["reason"] == "insufficient_funds"
    assert line["result_event_id"] == outcome.event_id
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "amount" not in line


def test_command_lines_can_move_to_debug(lines: list[dict[str, Any]]) -> None:
    json_logs.configure("test-service", level="INFO", command_lines=False)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(io.StringIO())
    command = parsed(transfer(uuid.uuid4(), uuid.uuid4(), 100))
    outcome = Outcome("transfer", "k", OutcomeKind.COMPLETED, None, "e", "transfer.completed")
    try:
        json_logs.log_outcomes(TRANSFER, [Incoming(command)], [outcome])
        assert flush(lines) == []
    finally:
        json_logs.configure("test-service", level="DEBUG", command_lines=True)


class _CountingStream(io.StringIO):
    flushes = 0
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_a_batch_of_command_lines_is_one_write_other_lines_at_once(
    lines: list[dict[str, Any]],
) -> None:
    """One write and flush per batch, not per command (with PYTHONUNBUFFERED every write is a
    system call); every line still its own, and out when the call returns. Any other line is
    flushed as it is logged."""
    stream = _CountingStream()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    before = (stream.writes, stream.flushes)
    commands = [parsed(transfer(uuid.uuid4(), uuid.uuid4(), 100)) for _ in range(5)]
    outcomes = [
        Outcome("transfer", c.idempotency_key, OutcomeKind.COMPLETED, None, "e", "t")
        for c in commands
    ]
    json_logs.log_outcomes(TRANSFER, [Incoming(c) for c in commands], outcomes)
    assert (stream.writes, stream.flushes) == (before[0] + 1, before[1] + 1)
    assert [line["idempotency_key"] for line in flush(lines)] == [
        c.idempotency_key for c in commands
    ]
    logging.getLogger("ledgerflow.test").warning("after the batch")
    assert stream.flushes == before[1] + 2
    assert flush(lines)[-1]["msg"] == "after the batch"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_command_lines_written_directly_are_the_lines_records_make(
    lines: list[dict[str, Any]],
) -> None:
    """The process' handler is written to without records; another handler on the way (a
    test's capture) still gets one record per command, and formatting those records gives the
    same lines, but for the time."""
    capture = _Capture()
    logging.getLogger(json_logs.COMMANDS_LOGGER).addHandler(capture)
    try:
        commands = [parsed(transfer(uuid.uuid4(), uuid.uuid4(), 100)) for _ in range(3)]
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        incoming = [Incoming(commands[0], traceparent), *map(Incoming, commands[1:])]
        outcomes = [
            Outcome("transfer", c.idempotency_key, OutcomeKind.COMPLETED, None, f"e{i}", "t")
            for i, c in enumerate(commands)
        ]
        json_logs.log_outcomes(TRANSFER, incoming, outcomes)
    finally:
        logging.getLogger(json_logs.COMMANDS_LOGGER).removeHandler(capture)
    written = flush(lines)
    formatter = logging.getLogger().handlers[0].formatter
    assert formatter is not None
    made = [json.loads(formatter.format(record)) for record in capture.records]
    assert len(written) == len(made) == 3
    for line in (*written, *made):
        del line["ts"]
    assert written == made
    assert written[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert [line["result_event_id"] for line in written] == ["e0", "e1", "e2"]
