"""The relay's pure decisions: which rows a round sends, whose fault a send error is, how long a
failing key waits, what the quarantine keeps of an error."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from ledgerflow.ledger_db.outbox import LAST_ERROR_CHARS_MAX, OutboxRow, bounded_error
from ledgerflow.workers.relay import (
    QUARANTINE_ATTEMPTS,
    RETRY_BACKOFF_MAX_S,
    RepeatFilter,
    is_row_fault,
    plan_round,
    retry_backoff_s,
)


def row(row_id: int, key: str, topic: str, blocked_by: int | None = None) -> OutboxRow:
    return OutboxRow(row_id, f"e{row_id}", topic, key.encode(), b"{}", None, 0, blocked_by)


def ids(rows: list[OutboxRow]) -> list[int]:
    return [r.id for r in rows]


def test_a_key_sends_to_one_topic_per_round_and_keeps_its_order() -> None:
    plan = plan_round(
        [
            row(1, "a", "transfer.completed"),
            row(2, "b", "cashin.completed"),
            row(3, "a", "transfer.completed"),
            row(4, "a", "cashin.completed"),  # a switches topic: a waits for the next round
            row(5, "b", "cashin.completed"),
            row(6, "a", "transfer.completed"),  # same topic as a's first, but behind row 4
            row(7, "c", "transfer.rejected"),
        ]
    )
    assert ids(plan.send) == [1, 2, 3, 5, 7]
    assert ids(plan.deferred) == [4, 6]
    assert plan.held == []


def test_rows_behind_a_quarantined_row_of_their_key_are_held() -> None:
    plan = plan_round(
        [
            row(3, "k", "cashin.completed"),  # older than the quarantined row 5: free to go
            row(8, "k", "cashin.completed", blocked_by=5),
            row(9, "m", "cashin.completed"),
            row(10, "k", "transfer.completed", blocked_by=5),
        ]
    )
    assert ids(plan.send) == [3, 9]
    assert ids(plan.held) == [8, 10]
    assert plan.deferred == []


def test_every_row_lands_in_exactly_one_list() -> None:
    rows = [row(i, "abc"[i % 3], ("t1", "t2")[i % 2], 1 if i % 5 == 0 else None) for i in range(40)]
    plan = plan_round(rows)
    assert sorted(ids(plan.send) + ids(plan.held) + ids(plan.deferred)) == list(range(40))
    for part in (plan.send, plan.held, plan.deferred):
        assert ids(part) == sorted(ids(part))


@pytest.mark.parametrize(
    "error",
    [
        TopicAuthorizationFailedError("t"),
        MessageSizeTooLargeError(),
    ],
)
def test_errors_of_the_row_itself(error: Exception) -> None:
    assert is_row_fault(error)


@pytest.mark.parametrize(
    "error",
    [
        # A broker outage, a leader election or a slow cluster: never a reason to quarantine.
        KafkaConnectionError(),
        KafkaTimeoutError(),
        RequestTimedOutError(),
        NotLeaderForPartitionError(),
        # Also raised for a topic that exists during a leader change: a missing topic is
        # established from fresh metadata, not from this error.
        UnknownTopicOrPartitionError(),
        OSError("network unreachable"),
    ],
)
def test_errors_of_the_infrastructure(error: Exception) -> None:
    assert not is_row_fault(error)


def test_backoff_doubles_up_to_its_bound() -> None:
    waits = [retry_backoff_s(n) for n in range(1, QUARANTINE_ATTEMPTS)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert sum(waits) == 15.5  # a row is quarantined about 15 s after its first failure
    assert retry_backoff_s(1_000) == RETRY_BACKOFF_MAX_S
    assert retry_backoff_s(0) == 0.5
    assert retry_backoff_s(3, base_s=0.05) == pytest.approx(0.2)


def test_error_text_is_bounded() -> None:
    assert bounded_error("UnknownTopicOrPartitionError", "topic t does not exist") == (
        "UnknownTopicOrPartitionError: topic t does not exist"
    )
    assert bounded_error("KafkaError", "") == "KafkaError"
    assert len(bounded_error("X", "y" * 10_000)) == LAST_ERROR_CHARS_MAX


def test_a_repeated_log_message_passes_once_per_interval() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("aiokafka.cluster", logging.ERROR, __file__, 1, message, (), None)

    once = RepeatFilter(interval_s=3_600)
    gone = "Topic %s not found in cluster metadata"
    passed = [once.filter(record(gone % "t.completed")) for _ in range(1_000)]
    assert passed.count(True) == 1
    assert once.filter(record(gone % "other.completed")), "another topic is another message"
    assert RepeatFilter(interval_s=0).filter(record(gone)) is True
