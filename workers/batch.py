"""One consumed batch: parse, dead-letter the unattributable, apply the rest in one transaction.

Kafka-agnostic (plain records in, outcomes out) so it runs the same under FastStream, in the
in-memory test broker and in benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from contracts.parsing import Unattributable, parse_command
from ledger_db.apply import Incoming, LedgerWriter, Outcome
from workers import metrics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from contracts.topics import Flow

ERROR_HEADER_CHARS_MAX = 1_000


class Record(Protocol):
    """The parts of a Kafka record we use (aiokafka's ConsumerRecord has them)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class DeadLetterSink(Protocol):
    async def __call__(self, letters: Sequence[DeadLetter]) -> None: ...


def header(record: Record, name: str) -> str | None:
    for key, value in record.headers or ():
        if key.lower() == name:
            return value.decode("utf-8", "replace")
    return None


def dead_letter(
    record: Record, reason: Unattributable, topic_prefix: str, flow: Flow
) -> DeadLetter:
    """The original bytes, unchanged, with the error and where they came from."""
    headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("x-error")]
    headers += [
        ("x-error", reason.error[:ERROR_HEADER_CHARS_MAX].encode()),
        ("x-error-class", reason.error_class.encode()),
        ("x-original-topic", record.topic.encode()),
        ("x-original-partition", str(record.partition).encode()),
        ("x-original-offset", str(record.offset).encode()),
    ]
    return DeadLetter(topic_prefix + flow.dlq_topic, record.key, record.value, headers)


@dataclass(slots=True)
class BatchProcessor:
    flow: Flow
    writer: LedgerWriter
    dead_letters: DeadLetterSink
    topic_prefix: str = ""
    message_bytes_max: int = 64 * 1024

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Dead letters are published before the transaction; offsets are committed after it."""
        incoming: list[Incoming] = []
        letters: list[DeadLetter] = []
        for record in records:
            parsed = parse_command(self.flow, record.value, max_bytes=self.message_bytes_max)
            if isinstance(parsed, Unattributable):
                letters.append(dead_letter(record, parsed, self.topic_prefix, self.flow))
                continue
            incoming.append(Incoming(parsed, header(record, "traceparent"), record.key))
        if letters:
            await self.dead_letters(letters)
            metrics.DEAD_LETTERS.labels(self.flow.command_topic).inc(len(letters))
        retries_before = dict(self.writer.retry_stats.by_cause)
        outcomes = await self.writer.apply(incoming)
        for cause, count in self.writer.retry_stats.by_cause.items():
            if count > retries_before.get(cause, 0):
                metrics.DB_RETRIES.labels(cause).inc(count - retries_before.get(cause, 0))
        for outcome in outcomes:
            metrics.COMMANDS.labels(self.flow.name, outcome.kind.value, outcome.reason or "").inc()
        metrics.BATCH_SIZE.labels(self.flow.name).observe(len(records))
        return outcomes
