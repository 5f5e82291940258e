"""One consumed batch: parse, dead-letter the unattributable, apply the rest in one transaction.

Kafka-agnostic (plain records in, outcomes out) so it runs the same under FastStream, in the
in-memory test broker and in benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ledgerflow.contracts.parsing import InvalidCommand, Unattributable, ValidCommand, parse_command
from ledgerflow.ledger_db.apply import Incoming, LedgerWriter, LockTiming, Outcome
from ledgerflow.workers import metrics, tracing
from ledgerflow.workers.auth import Authenticator, Refusal
from ledgerflow.workers.dead_letters import DeadLetter, dead_letter
from ledgerflow.workers.failures import InfrastructureFault, is_infrastructure
from ledgerflow.workers.logging import log_outcomes
from ledgerflow.workers.records import Record, header

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ledgerflow.contracts.topics import Flow


class InjectedFault(RuntimeError):  # noqa: N818 - named for what it is: a test hook's fault
    """Raised by the fault-injection test hook; never raised in a normal deployment."""


class PoisonUnproven(InfrastructureFault):
    """Records failed one by one, but nothing else of their flow applied meanwhile: without that
    proof the infrastructure, not the records, is presumed at fault, and they wait."""


class DeadLetterSink(Protocol):
    async def __call__(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Write the letters; return those refused even truncated."""
        ...


Position = tuple[str, int]  # (topic, partition)


@dataclass(slots=True)
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    # Records applied or dead-lettered: their offsets may be committed.
    handled: list[Record] = field(default_factory=list)
    # Partitions whose dead letter was refused, with the offset to consume again from: that
    # record and those after it in its partition were not applied.
    held: dict[Position, int] = field(default_factory=dict)
    # Set when isolating stopped short (an unproven poison, an infrastructure error): `handled`
    # may still be committed, the other records are retried.
    interrupted: Exception | None = None

    def merge(self, other: BatchResult) -> None:
        self.outcomes += other.outcomes
        self.handled += other.handled
        for position, offset in other.held.items():
            self.held[position] = min(offset, self.held.get(position, offset))


def _held_back(record: Record, held: dict[Position, int]) -> bool:
    offset = held.get((record.topic, record.partition))
    return offset is not None and record.offset >= offset


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

    async def process(self, records: Sequence[Record]) -> BatchResult:
        """Dead letters are written before the transaction; offsets are committed after it.

        A record whose dead letter is refused holds back its partition from that offset on;
        the other partitions of the batch are applied as usual.
        """
        if self.authenticator is not None:
            # Any key fetch happens here, once per batch, so verifying each record stays
            # synchronous; an unreadable provider raises IdentityProviderUnavailable (waits).
            await self.authenticator.ensure_keys(
                header(r.headers, "authorization") for r in records
            )
        parsed_records: list[tuple[Record, Incoming | None]] = []
        letters: list[DeadLetter] = []
        for record in records:
            if self.poison_marker and self.poison_marker in (record.value or b""):
                raise InjectedFault(f"injected fault at offset {record.offset}")
            parsed = parse_command(self.flow, record.value, max_bytes=self.message_bytes_max)
            if isinstance(parsed, Unattributable):
                letters.append(dead_letter(record, parsed, self.topic_prefix, self.flow))
                parsed_records.append((record, None))
                continue
            parsed_records.append((record, self._incoming(parsed, record)))
        result = BatchResult()
        if letters:
            result.held = await self._write_dead_letters(letters)
        kept = [(r, item) for r, item in parsed_records if not _held_back(r, result.held)]
        incoming = [item for _, item in kept if item is not None]
        result.outcomes = await self._apply(incoming, len(records))
        result.handled = [r for r, _ in kept]
        return result

    async def _write_dead_letters(self, letters: list[DeadLetter]) -> dict[Position, int]:
        refused = await self.dead_letters(letters)
        metrics.DEAD_LETTERS.labels(self.flow.command_topic).inc(len(letters) - len(refused))
        held: dict[Position, int] = {}
        for letter in refused:
            position = (letter.source_topic, letter.source_partition)
            held[position] = min(letter.source_offset, held.get(position, letter.source_offset))
        return held

    async def _apply(self, incoming: list[Incoming], records: int) -> list[Outcome]:
        stats = self.writer.retry_stats
        retries_before = dict(stats.by_cause)
        ended_before = stats.stuck_sessions_ended
        timing = LockTiming()
        with tracing.ledger_transaction(self.flow.name, len(incoming)):
            outcomes = await self.writer.apply(incoming, timing=timing)
        if timing.locked_at is not None:
            metrics.BATCH_LOCK_WAIT.labels(self.flow.name).observe(timing.lock_wait_s)
            metrics.BATCH_LOCKED.labels(self.flow.name).observe(timing.locked_s)
        metrics.STUCK_SESSIONS_ENDED.inc(stats.stuck_sessions_ended - ended_before)
        for cause, count in stats.by_cause.items():
            if count > retries_before.get(cause, 0):
                metrics.DB_RETRIES.labels(cause).inc(count - retries_before.get(cause, 0))
        for outcome in outcomes:
            metrics.COMMANDS.labels(self.flow.name, outcome.kind.value, outcome.reason or "").inc()
        log_outcomes(self.flow, incoming, outcomes)
        tracing.annotate_outcomes(incoming, outcomes)
        metrics.BATCH_SIZE.labels(self.flow.name).observe(records)
        return outcomes

    async def process_isolating(
        self,
        records: Sequence[Record],
        *,
        flow_applied_since: bool = False,
        alone_long_enough: bool = False,
    ) -> BatchResult:
        """After a batch failed again and again for a suspect reason: apply its records one at
        a time, in order. A record that still fails is dead-lettered, with the error, only when
        it failed alone while others applied — here, or elsewhere in the flow since it first
        failed (`flow_applied_since`), or when it is the only record that fails and nothing else
        came to compare it with for as many more attempts (`alone_long_enough`, a record on an
        idle flow). Otherwise — several records all failing alone — the fault is presumed the
        infrastructure's (a bad deploy, a half-migrated schema) and the result says so in
        `interrupted` (`PoisonUnproven`); so does an infrastructure error met on the way.

        The caller commits `handled` even then and retries the rest, so nothing done here is
        done twice: without proof nothing applied, and an unparseable record after a failing
        one in its partition waits for the verdict before its dead letter is written."""
        result = BatchResult()
        failed: list[tuple[Record, Exception]] = []
        stopped: set[Position] = set()
        deferred: list[Record] = []
        applied = 0
        for record in records:
            if _held_back(record, result.held):
                continue
            if (record.topic, record.partition) in stopped and isinstance(
                parse_command(self.flow, record.value, max_bytes=self.message_bytes_max),
                Unattributable,
            ):
                deferred.append(record)  # no proof either way; its letter waits for the verdict
                continue
            try:
                one = await self.process([record])
            except Exception as error:
                if is_infrastructure(error):
                    result.interrupted = error
                    return result
                failed.append((record, error))
                stopped.add((record.topic, record.partition))
                continue
            applied += len(one.outcomes)
            result.merge(one)
        if not failed:
            return result
        if not (applied or flow_applied_since or (len(failed) == 1 and alone_long_enough)):
            first = failed[0][1]
            result.interrupted = PoisonUnproven(
                f"{len(failed)} record(s) failed alone and nothing else of the flow applied: "
                f"{type(first).__name__}"
            )
            return result
        letters = [
            dead_letter(
                record,
                Unattributable(
                    error=f"processing failed: {type(error).__name__}: {error}",
                    error_class=f"processing_{type(error).__name__}",
                ),
                self.topic_prefix,
                self.flow,
            )
            for record, error in failed
        ]
        try:
            held = await self._write_dead_letters(letters)
            result.merge(BatchResult(held=held))
            kept = [r for r in deferred if not _held_back(r, result.held)]
            if kept:
                result.merge(await self.process(kept))
        except Exception as error:
            if not is_infrastructure(error):
                raise
            result.interrupted = error
            return result
        # A refused letter holds back its partition from its record on: those come again.
        handled = [*result.handled, *(r for r, _ in failed)]
        result.handled = [r for r in handled if not _held_back(r, result.held)]
        return result
