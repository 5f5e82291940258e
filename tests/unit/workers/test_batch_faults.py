"""The batch processor's fault rules without Kafka or PostgreSQL: fakes for the ledger and the
dead-letter topic, real parsing and real dead-letter building."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from ledgerflow.contracts.topics import TRANSFER
from ledgerflow.ledger_db.apply import Incoming, LockTiming, Outcome, OutcomeKind
from ledgerflow.ledger_db.unit_of_work import RetryStats
from ledgerflow.testkit.commands import ConsumedRecord, record, transfer
from ledgerflow.workers.batch import BatchProcessor, InjectedFault, PoisonUnproven
from ledgerflow.workers.dead_letters import (
    TRUNCATED_VALUE_BYTES_MAX,
    DeadLetter,
    truncated,
)

MARKER = "POISON-7f3a"


@dataclass
class FakeWriter:
    """Applies anything, or fails every call with `error`."""

    error: BaseException | None = None
    applied: list[str] = field(default_factory=list)
    retry_stats: RetryStats = field(default_factory=RetryStats)

    async def apply(
        self, batch: list[Incoming], *, timing: LockTiming | None = None
    ) -> list[Outcome]:
        if self.error is not None:
            raise self.error
        outcomes = []
        for item in batch:
            key = item.command.idempotency_key
            self.applied.append(key)
            outcomes.append(
                Outcome("transfer", key, OutcomeKind.COMPLETED, None, str(uuid.uuid4()), "t")
            )
        return outcomes


@dataclass
class FakeSink:
    """The dead-letter topic: refuses letters whose source partition is in `refuse`."""

    refuse: set[int] = field(default_factory=set)
    written: list[DeadLetter] = field(default_factory=list)

    async def __call__(self, letters: Any) -> list[DeadLetter]:
        refused = [x for x in letters if x.source_partition in self.refuse]
        self.written += [x for x in letters if x.source_partition not in self.refuse]
        return refused


def rec(
    partition: int, offset: int, *, note: str | None = None, value: bytes | None = None
) -> ConsumedRecord:
    command = transfer(uuid.uuid4(), uuid.uuid4(), 10)
    if note is not None:
        command = command.model_copy(update={"note": note})
    kafka = record(command)
    headers = [*kafka.headers, ("authorization", b"Bearer live-token")]
    return ConsumedRecord(
        "transfer.initiated", partition, offset, kafka.key, value or kafka.value, headers
    )


def processor(writer: FakeWriter, sink: FakeSink) -> BatchProcessor:
    return BatchProcessor(
        TRANSFER,
        writer,  # type: ignore[arg-type]
        sink,
        message_bytes_max=1024 * 1024,
        poison_marker=MARKER.encode(),
    )


async def test_a_poison_record_is_dead_lettered_only_while_others_apply() -> None:
    writer, sink = FakeWriter(), FakeSink()
    batch = [rec(0, 1), rec(0, 2, note=MARKER), rec(0, 3)]
    result = await processor(writer, sink).process_isolating(batch)
    assert len(writer.applied) == 2
    [letter] = sink.written
    assert dict(letter.headers)["x-error-class"] == b"processing_InjectedFault"
    assert sorted(r.offset for r in result.handled) == [1, 2, 3]


async def test_a_lone_failing_record_is_not_dead_lettered_without_proof() -> None:
    writer, sink = FakeWriter(), FakeSink()
    unproven = await processor(writer, sink).process_isolating([rec(0, 7, note=MARKER)])
    assert isinstance(unproven.interrupted, PoisonUnproven)
    assert unproven.handled == []
    assert sink.written == []
    # Alone for as many more attempts, with nothing to compare it with: the record's fault.
    result = await processor(writer, sink).process_isolating(
        [rec(0, 7, note=MARKER)], alone_long_enough=True
    )
    assert len(sink.written) == 1
    sink.written.clear()
    # The same record, once the flow proved healthy elsewhere, is the record's fault.
    result = await processor(writer, sink).process_isolating(
        [rec(0, 7, note=MARKER)], flow_applied_since=True
    )
    assert len(sink.written) == 1
    assert [r.offset for r in result.handled] == [7]


async def test_every_record_failing_alone_means_the_infrastructure_not_the_records() -> None:
    """A bug or fault that breaks every command (a deploy gone wrong) dead-letters nothing."""
    writer = FakeWriter(error=ValueError("every command fails"))
    sink = FakeSink()
    for waited in (False, True):
        result = await processor(writer, sink).process_isolating(
            [rec(0, i) for i in range(5)], alone_long_enough=waited
        )
        assert isinstance(result.interrupted, PoisonUnproven)
        assert result.handled == []
    assert sink.written == []


async def test_an_unproven_poison_keeps_what_isolation_already_handled() -> None:
    """Unparseable records dead-lettered before an unproven poison are kept (committed by the
    caller), and one after it waits for the verdict: no record gets a second dead letter."""
    writer, sink = FakeWriter(), FakeSink()
    garbage, poison = rec(0, 40, value=b"not json"), rec(0, 41, note=MARKER)
    other, late = rec(1, 5, value=b"also not json"), rec(0, 42, value=b"late garbage")
    result = await processor(writer, sink).process_isolating([garbage, other, poison, late])
    assert isinstance(result.interrupted, PoisonUnproven)
    assert sorted((r.partition, r.offset) for r in result.handled) == [(0, 40), (1, 5)]
    assert [x.source_offset for x in sink.written] == [40, 5]
    again = await processor(writer, sink).process_isolating([poison, late])
    assert isinstance(again.interrupted, PoisonUnproven)
    assert again.handled == []
    assert len(sink.written) == 2
    proven = await processor(writer, sink).process_isolating([poison, late], alone_long_enough=True)
    assert proven.interrupted is None
    assert sorted(r.offset for r in proven.handled) == [41, 42]
    assert sorted(x.source_offset for x in sink.written) == [5, 40, 41, 42]
    assert writer.applied == []


async def test_infrastructure_errors_interrupt_isolation() -> None:
    writer = FakeWriter(error=asyncpg.InsufficientPrivilegeError("permission denied"))
    result = await processor(writer, FakeSink()).process_isolating([rec(0, 1), rec(0, 2)])
    assert isinstance(result.interrupted, asyncpg.InsufficientPrivilegeError)
    assert result.handled == []


async def test_a_refused_dead_letter_holds_back_only_its_partition() -> None:
    writer, sink = FakeWriter(), FakeSink(refuse={1})
    batch = [rec(0, 10), rec(1, 20, value=b"not json"), rec(1, 21), rec(2, 30), rec(1, 19)]
    result = await processor(writer, sink).process(batch)
    assert result.held == {("transfer.initiated", 1): 20}
    # Partition 1 before the refused letter, and the other partitions, are applied.
    assert sorted((r.partition, r.offset) for r in result.handled) == [(0, 10), (1, 19), (2, 30)]
    assert len(writer.applied) == 3


async def test_dead_letters_never_carry_the_authorization_header() -> None:
    sink = FakeSink()
    await processor(FakeWriter(), sink).process([rec(0, 1, value=b"{not json")])
    [letter] = sink.written
    assert all(k.lower() != "authorization" for k, _ in letter.headers)
    assert dict(letter.headers)["x-original-offset"] == b"1"


def test_a_truncated_letter_keeps_the_error_and_says_it_was_cut() -> None:
    sink = FakeSink()
    letter = DeadLetter(
        "transfer.initiated.dlq",
        b"k",
        b"x" * 1_000_000,
        [("content-type", b"a/b"), ("x-error", b"too large"), ("x-original-offset", b"5")],
    )
    short = truncated(letter)
    assert short.value == b"x" * TRUNCATED_VALUE_BYTES_MAX
    headers = dict(short.headers)
    assert headers["x-error"] == b"too large"
    assert headers["x-truncated"] == b"value of 1000000 bytes cut"
    assert headers["content-type"] == b"a/b"
    huge = DeadLetter("d", None, b"v", [("big", b"y" * 100_000), ("x-error", b"e")])
    assert dict(truncated(huge).headers).keys() == {"x-error", "x-headers-dropped", "x-truncated"}
    assert sink.written == []


async def test_injected_fault_is_raised_for_the_whole_batch() -> None:
    with pytest.raises(InjectedFault):
        await processor(FakeWriter(), FakeSink()).process([rec(0, 1), rec(0, 2, note=MARKER)])
