"""One consumed batch: parse, dead-letter the unattributable, apply the rest in one transaction.

Kafka-agnostic (plain records in, outcomes out) so it runs the same under FastStream, in the
in-memory test broker and in benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import asyncpg
from aiokafka.errors import KafkaError

from contracts.parsing import InvalidCommand, Unattributable, ValidCommand, parse_command
from ledger_db.apply import Incoming, LedgerWriter, Outcome
from workers import metrics, tracing
from workers.auth import Authenticator, Refusal
from workers.logging import log_outcomes
from workers.records import Record, header

if TYPE_CHECKING:
    from collections.abc import Sequence

    from contracts.topics import Flow

ERROR_HEADER_CHARS_MAX = 1_000

# Failures of the infrastructure, not of a message: retried with backoff for as long as they
# last, never dead-lettered (a PostgreSQL outage must not empty the topic into the DLQ).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    KafkaError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.OperatorInterventionError,
    asyncpg.QueryCanceledError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.LockNotAvailableError,
    # The server ended a session that sat idle in its transaction (the worker was frozen).
    asyncpg.IdleInTransactionSessionTimeoutError,
)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT_ERRORS)


class InjectedFault(RuntimeError):  # noqa: N818 - named for what it is: a test hook's fault
    """Raised by the fault-injection test hook; never raised in a normal deployment."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class DeadLetterSink(Protocol):
    async def __call__(self, letters: Sequence[DeadLetter]) -> None: ...


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
    # Test hook (LEDGERFLOW_FAULT_POISON_MARKER): a message whose bytes contain it fails like a
    # handler bug would, every time. Empty in every real deployment.
    poison_marker: bytes = b""
    # None when authentication is off (LEDGERFLOW_AUTH_MODE=off).
    authenticator: Authenticator | None = None

    def _incoming(self, parsed: ValidCommand | InvalidCommand, record: Record) -> Incoming:
        """The command with who asked for it; a refused token makes it `unauthorized`."""
        traceparent = tracing.outbox_traceparent(record)
        if self.authenticator is None or not isinstance(parsed, ValidCommand):
            return Incoming(parsed, traceparent, record.key)
        verdict = self.authenticator.verify(header(record.headers, "authorization"), parsed)
        if isinstance(verdict, Refusal):
            metrics.UNAUTHORIZED.labels(self.flow.name).inc()
            return Incoming(parsed, traceparent, record.key, refused=verdict.detail)
        return Incoming(parsed, traceparent, record.key, subject=verdict.subject)

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Dead letters are published before the transaction; offsets are committed after it."""
        incoming: list[Incoming] = []
        letters: list[DeadLetter] = []
        for record in records:
            if self.poison_marker and self.poison_marker in (record.value or b""):
                raise InjectedFault(f"injected fault at offset {record.offset}")
            parsed = parse_command(self.flow, record.value, max_bytes=self.message_bytes_max)
            if isinstance(parsed, Unattributable):
                letters.append(dead_letter(record, parsed, self.topic_prefix, self.flow))
                continue
            incoming.append(self._incoming(parsed, record))
        if letters:
            await self.dead_letters(letters)
            metrics.DEAD_LETTERS.labels(self.flow.command_topic).inc(len(letters))
        stats = self.writer.retry_stats
        retries_before = dict(stats.by_cause)
        ended_before = stats.stuck_sessions_ended
        with tracing.ledger_transaction(self.flow.name, len(incoming)):
            outcomes = await self.writer.apply(incoming)
        metrics.STUCK_SESSIONS_ENDED.inc(stats.stuck_sessions_ended - ended_before)
        for cause, count in stats.by_cause.items():
            if count > retries_before.get(cause, 0):
                metrics.DB_RETRIES.labels(cause).inc(count - retries_before.get(cause, 0))
        for outcome in outcomes:
            metrics.COMMANDS.labels(self.flow.name, outcome.kind.value, outcome.reason or "").inc()
        log_outcomes(self.flow, incoming, outcomes)
        tracing.annotate_outcomes(incoming, outcomes)
        metrics.BATCH_SIZE.labels(self.flow.name).observe(len(records))
        return outcomes

    async def process_isolating(self, records: Sequence[Record]) -> int:
        """After a batch failed for reasons other than the infrastructure: apply its records one
        at a time, in order, and dead-letter each that still fails, with the error. Transient
        errors propagate (the caller rewinds and retries). Returns the records dead-lettered."""
        dead = 0
        for record in records:
            try:
                await self.process([record])
            except Exception as error:
                if is_transient(error):
                    raise
                reason = Unattributable(
                    error=f"processing failed: {type(error).__name__}: {error}",
                    error_class=f"processing_{type(error).__name__}",
                )
                await self.dead_letters([dead_letter(record, reason, self.topic_prefix, self.flow)])
                metrics.DEAD_LETTERS.labels(self.flow.command_topic).inc()
                dead += 1
        return dead
