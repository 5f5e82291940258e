"""The outbox relay: publish committed result events to Kafka, in order, at least once.

One relay is active at a time: it holds a PostgreSQL session advisory lock on the connection it
reads and marks with, so if it dies the lock is freed and a standby takes over
(docs/decisions/outbox-relay.md). It sends a batch in id order through an idempotent producer,
waits for every acknowledgement, then marks the rows published. A crash between the two
re-sends them with the same CloudEvents ids; nothing is ever skipped.

A row that cannot be published for a reason of its own (its topic is missing, the relay may not
write it, it is too large) is retried with backoff, its key held meanwhile, and quarantined
after `quarantine_attempts`; the other keys flow on. A broker or database outage is nobody's
row's fault: the round fails and is retried, however long the outage lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)

from ledgerflow.ledger_db.outbox import (
    RELAY_BATCH_MAX,
    bounded_error,
    fetch_pending,
    mark_published,
    outbox_stats,
    prune_published,
    quarantine_held,
    record_failures,
    try_lock_relay,
)
from ledgerflow.ledger_db.sql import OUTBOX_CHANNEL
from ledgerflow.workers import http, metrics, tracing
from ledgerflow.workers.kafka_io import (
    PRODUCER_BATCH_BYTES_MAX,
    idempotent_producer,
    key_partitioner,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from aiokafka import AIOKafkaProducer
    from aiokafka.producer.message_accumulator import BatchBuilder

    from ledgerflow.ledger_db.outbox import OutboxRow
    from ledgerflow.workers.lag import LagMonitor

log = logging.getLogger("ledgerflow.relay")

POLL_INTERVAL_S = 0.5  # fallback when a NOTIFY is missed; NOTIFY is only a hint
LOCK_RETRY_INTERVAL_S = 1.0
STATS_INTERVAL_S = 2.0
ERROR_BACKOFF_MAX_S = 5.0

# Quarantine (docs/decisions/outbox-relay.md): attempts per row, and the backoff of its key
# between them: 0.5, 1, 2, 4, 8 s, so six attempts take about 15 s.
QUARANTINE_ATTEMPTS = 6
RETRY_BACKOFF_S = 0.5
RETRY_BACKOFF_MAX_S = 8.0
HOLD_WAKE_MIN_S = 0.01
HELD_ERROR_CLASS = "HeldBehindQuarantinedRow"  # error_class of the rows quarantined behind one

# Kafka bounds. A record waits at most this long for its acknowledgement (aiokafka fails a
# record whose partition has no leader after its request timeout; with idempotence it retries
# other errors forever, so the relay bounds the wait itself too).
SEND_TIMEOUT_S = 10.0
# While acknowledgements are outstanding, the topics they wait on are looked up this often: a
# topic deleted under the relay fails its rows then instead of after SEND_TIMEOUT_S.
ACK_CHECK_INTERVAL_S = 1.0
METADATA_TIMEOUT_S = 5.0
REPEATED_LOG_INTERVAL_S = 10.0
REPEATED_LOG_MESSAGES_MAX = 1_000

# Errors that are a row's own fault: retrying the same record cannot succeed until someone acts.
# UnknownTopicOrPartitionError is not among them: a leader election raises it for a topic that
# exists, so a missing topic is established from fresh metadata instead.
ROW_FAULT_ERRORS: tuple[type[KafkaError], ...] = (
    TopicAuthorizationFailedError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
    CorruptRecordException,
    InvalidTimestampError,
    PolicyViolationError,
)

# The relay's PostgreSQL session. A relay host that vanishes leaves a connection nobody closes:
# keepalives (idle 10 s, then 4 probes 5 s apart) and the TCP user timeout (30 s of unanswered
# data) make PostgreSQL end that session within about 30 s, which frees the advisory lock for a
# standby. Its statements are small: anything slower than these bounds is a fault.
# synchronous_commit off: a "published" mark lost in a crash only re-sends events (same ids),
# and it keeps the relay off the commit queue the money transactions wait in.
RELAY_SERVER_SETTINGS = {
    "synchronous_commit": "off",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "4",
    "tcp_user_timeout": "30000",
    "statement_timeout": "10000",
    "lock_timeout": "5000",
    "idle_in_transaction_session_timeout": "10000",
}
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 15.0  # client side: a server that vanished mid-query
# A row over this (payload and key) is sent alone through the producer's `send`, which bounds a
# record's size itself; smaller ones are batched by the relay, a quarter of a batch at most each.
ALONE_BYTES_MIN = PRODUCER_BATCH_BYTES_MAX // 4

# Retention: published rows older than the retention are deleted by the active relay, in bounded
# statements, a few per round, one round a minute once caught up (every second while behind).
OUTBOX_RETENTION_S = 7 * 24 * 3_600
PRUNE_ROWS_PER_STATEMENT = 1_000
PRUNE_STATEMENTS_PER_ROUND = 5
PRUNE_INTERVAL_S = 60.0
PRUNE_BACKLOG_INTERVAL_S = 1.0


class RepeatFilter(logging.Filter):
    """Lets the same message through once per interval. aiokafka logs "Topic … not found in
    cluster metadata" at ERROR on every metadata update, and while records wait for a deleted
    topic its sender updates metadata in a tight loop: thousands of lines a second."""

    def __init__(self, interval_s: float = REPEATED_LOG_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message, now = record.getMessage(), time.monotonic()
        last = self._last.get(message)
        if last is not None and now - last < self.interval_s:
            return False
        if len(self._last) >= REPEATED_LOG_MESSAGES_MAX:
            self._last.clear()
        self._last[message] = now
        return True


def quiet_repeated_metadata_errors() -> None:
    """Install the RepeatFilter on aiokafka's cluster logger, once per process."""
    cluster_log = logging.getLogger("aiokafka.cluster")
    if not any(isinstance(f, RepeatFilter) for f in cluster_log.filters):
        cluster_log.addFilter(RepeatFilter())


def retry_backoff_s(attempts: int, base_s: float = RETRY_BACKOFF_S) -> float:
    """How long a key waits after its row's `attempts`-th failed attempt."""
    doublings = min(max(0, attempts - 1), 16)
    return min(RETRY_BACKOFF_MAX_S, base_s * (1 << doublings))


def is_row_fault(error: BaseException) -> bool:
    return isinstance(error, ROW_FAULT_ERRORS)


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """What one round does with the rows it fetched, all in id order."""

    send: list[OutboxRow]
    held: list[OutboxRow]  # an older row of the key is quarantined: quarantine these too
    deferred: list[OutboxRow]  # the key already sends to another topic this round: next round


def plan_round(rows: Sequence[OutboxRow]) -> RoundPlan:
    """Split a round's rows. A key sends to one topic per round: its rows to one topic go to one
    partition, in order, and fail together when the topic does; a row of the same key for
    another topic waits for the next round, so it is never in flight beside an older row of its
    key that may yet fail."""
    send: list[OutboxRow] = []
    held: list[OutboxRow] = []
    deferred: list[OutboxRow] = []
    topic_of_key: dict[bytes, str] = {}
    deferred_keys: set[bytes] = set()
    for row in rows:
        if row.blocked_by is not None:
            held.append(row)
        elif row.key in deferred_keys or topic_of_key.setdefault(row.key, row.topic) != row.topic:
            deferred_keys.add(row.key)
            deferred.append(row)
        else:
            send.append(row)
    return RoundPlan(send, held, deferred)


@dataclass(frozen=True, slots=True)
class RowFailure:
    row: OutboxRow
    error_class: str
    message: str


@dataclass(slots=True)
class SendResult:
    published: list[OutboxRow] = field(default_factory=list)
    failures: list[RowFailure] = field(default_factory=list)  # the rows' own faults
    # The broker's fault (outage, timeout): the round fails after the rest is recorded.
    error: BaseException | None = None


async def connect_relay(database_url: str) -> asyncpg.Connection:
    """The relay's session, with the keepalives and timeouts of RELAY_SERVER_SETTINGS."""
    return await asyncpg.connect(
        database_url,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings=RELAY_SERVER_SETTINGS,
    )


@dataclass(slots=True)
class Relay:
    database_url: str
    bootstrap_servers: str
    batch_rows_max: int = 1_000
    kafka_security: dict[str, Any] = field(default_factory=dict)  # kafka_client_options()
    topic_prefix: str = ""  # left off the metrics' topic label
    quarantine_attempts: int = QUARANTINE_ATTEMPTS
    retry_backoff_s: float = RETRY_BACKOFF_S
    send_timeout_s: float = SEND_TIMEOUT_S
    retention_s: float = OUTBOX_RETENTION_S
    prune_rows_per_statement: int = PRUNE_ROWS_PER_STATEMENT
    prune_statements_per_round: int = PRUNE_STATEMENTS_PER_ROUND
    prune_interval_s: float = PRUNE_INTERVAL_S
    active: bool = False
    published: int = 0
    quarantined: int = 0
    pruned: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stats_at: float = 0.0
    # Keys whose oldest row failed, until when they wait (monotonic): skipped by the fetch, so
    # the other keys flow meanwhile.
    _holds: dict[bytes, float] = field(default_factory=dict)
    _quarantine_known: bool = False  # some row is quarantined: rows must be checked against it
    _prune_after_id: int = 0
    _prune_due_at: float = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: wait for the lock, then relay; reconnect after any failure."""
        quiet_repeated_metadata_errors()
        producer = idempotent_producer(
            self.bootstrap_servers,
            "ledgerflow-relay",
            self.kafka_security,
            request_timeout_ms=int(self.send_timeout_s * 1000),
        )
        await producer.start()
        metrics.OUTBOX_QUARANTINED.set(0)
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._session(producer, stop)
                    failures = 0
                except (
                    OSError,
                    KafkaError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                ) as error:
                    failures += 1
                    metrics.RELAY_ERRORS.labels(type(error).__name__).inc()
                    log.warning("relay session failed", extra={"error_class": type(error).__name__})
                    await _wait(stop, min(ERROR_BACKOFF_MAX_S, 0.1 * 2**failures))
        finally:
            self.active = False
            metrics.RELAY_ACTIVE.set(0)
            await producer.stop()

    async def _session(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        conn = await connect_relay(self.database_url)
        try:
            while not await try_lock_relay(conn):
                if await _wait(stop, LOCK_RETRY_INTERVAL_S):
                    return
            self.active = True
            metrics.RELAY_ACTIVE.set(1)
            log.info("relay active")
            self._stats_at = 0.0
            await self._update_stats(conn)
            await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
            while not stop.is_set():
                self._wake.clear()
                more = await self._round(conn, producer)
                await self._update_stats(conn)
                await self._prune(conn)
                if not more:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._idle_wait_s())
        finally:
            self.active = False
            metrics.RELAY_ACTIVE.set(0)
            await conn.close()

    async def _round(self, conn: asyncpg.Connection, producer: AIOKafkaProducer) -> bool:
        """Publish what is due; True when more may be waiting right away."""
        now = time.monotonic()
        self._holds = {key: until for key, until in self._holds.items() if until > now}
        rows = await fetch_pending(
            conn,
            self.batch_rows_max,
            skip_keys=list(self._holds),
            check_quarantine=self._quarantine_known,
        )
        if not rows:
            return False
        plan = plan_round(rows)
        if plan.held:
            for row_id, topic in await quarantine_held(conn, [row.id for row in plan.held]):
                self._count_quarantined(topic, HELD_ERROR_CLASS)
                log.warning(
                    "outbox row quarantined",
                    extra={"outbox_id": row_id, "topic": topic, "error_class": HELD_ERROR_CLASS},
                )
        result = await self._send(producer, plan.send)
        if result.published:
            await mark_published(conn, [row.id for row in result.published])
            self.published += len(result.published)
            metrics.RELAY_PUBLISHED.inc(len(result.published))
        if result.failures:
            await self._record(conn, result)
        if result.error is not None:
            raise result.error
        full = len(rows) >= min(self.batch_rows_max, RELAY_BATCH_MAX)
        return full or bool(plan.held or plan.deferred)

    async def _send(self, producer: AIOKafkaProducer, rows: list[OutboxRow]) -> SendResult:
        """Send in id order and wait (bounded) for the acknowledgements. Per-key order: once a
        row of a key fails, no later row of that key is sent this round."""
        result = SendResult()
        if not rows:
            return result
        failed_keys: set[bytes] = set()
        try:
            down = await _unavailable_topics(producer, {row.topic for row in rows})
        except KafkaError as error:
            result.error = error
            return result
        to_send: list[OutboxRow] = []
        for row in rows:
            if row.key in failed_keys:
                continue
            if row.topic in down:
                result.failures.append(RowFailure(row, *down[row.topic]))
                failed_keys.add(row.key)
            else:
                to_send.append(row)
        in_flight: dict[asyncio.Future[Any], list[OutboxRow]] = {}
        # Each event continues the trace its outbox row stored (workers/tracing.py).
        with tracing.publish_spans(to_send) as traceparents:
            try:
                await _submit(producer, to_send, traceparents, failed_keys, in_flight, result)
            except KafkaError as error:  # e.g. the send buffer stayed full: the rows not in
                result.error = error  # flight wait for the next round
            await self._settle(producer, in_flight, result)
        _check_order(result)
        return result

    async def _settle(
        self,
        producer: AIOKafkaProducer,
        in_flight: dict[asyncio.Future[Any], list[OutboxRow]],
        result: SendResult,
    ) -> None:
        """Wait for the acknowledgements, up to `send_timeout_s`; meanwhile, rows whose topic
        has disappeared are failed at once (their records may still be delivered later if the
        topic comes back: a duplicate, with the same id, which consumers drop)."""
        deadline = time.monotonic() + self.send_timeout_s
        unsure: list[tuple[OutboxRow, BaseException]] = []
        while in_flight:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _abandon(list(in_flight))
                result.error = result.error or KafkaTimeoutError(
                    f"{sum(map(len, in_flight.values()))} record(s) unacknowledged after"
                    f" {self.send_timeout_s} s"
                )
                break
            done, _ = await asyncio.wait(in_flight, timeout=min(ACK_CHECK_INTERVAL_S, remaining))
            for future in done:
                rows = in_flight.pop(future)
                error = future.exception()
                if error is None:
                    result.published += rows
                elif is_row_fault(error):
                    result.failures += [
                        RowFailure(row, type(error).__name__, str(error)) for row in rows
                    ]
                else:
                    unsure += [(row, error) for row in rows]
            if in_flight:  # an interval passed with records still unacknowledged
                gone = await _unavailable_topics_or_none(
                    producer, {rows[0].topic for rows in in_flight.values()}
                )
                for future, rows in list(in_flight.items()):
                    if rows[0].topic in gone:  # a batch is of one partition, one topic
                        _abandon([future])
                        del in_flight[future]
                        result.failures += [RowFailure(row, *gone[row.topic]) for row in rows]
        if unsure:
            # Not the row's fault, unless its topic turns out to be missing or forbidden.
            gone = await _unavailable_topics_or_none(producer, {row.topic for row, _ in unsure})
            for row, error in unsure:
                if row.topic in gone:
                    result.failures.append(RowFailure(row, *gone[row.topic]))
                else:
                    result.error = result.error or error
        result.published.sort(key=lambda row: row.id)
        result.failures.sort(key=lambda failure: failure.row.id)

    async def _record(self, conn: asyncpg.Connection, result: SendResult) -> None:
        """Count the failed attempts; quarantine the rows out of attempts; hold the others' keys
        for their backoff."""
        failures = {failure.row.id: failure for failure in result.failures}
        recorded = await record_failures(
            conn,
            [(f.row.id, bounded_error(f.error_class, f.message)) for f in result.failures],
            self.quarantine_attempts,
        )
        now = time.monotonic()
        quarantined_keys = {row.key for row in recorded if row.quarantined}
        for row in recorded:
            failure = failures[row.id]
            if row.quarantined:
                self._count_quarantined(row.topic, failure.error_class)
                self._holds.pop(row.key, None)  # its later rows are quarantined behind it
                log.warning(
                    "outbox row quarantined",
                    extra={
                        "outbox_id": row.id,
                        "topic": row.topic,
                        "error_class": failure.error_class,
                        "attempts": row.attempts,
                    },
                )
            elif row.key not in quarantined_keys:
                until = now + retry_backoff_s(row.attempts, self.retry_backoff_s)
                self._holds[row.key] = max(self._holds.get(row.key, 0.0), until)
                log.info(
                    "outbox row not published, will retry",
                    extra={
                        "outbox_id": row.id,
                        "topic": row.topic,
                        "error_class": failure.error_class,
                        "attempts": row.attempts,
                    },
                )

    def _idle_wait_s(self) -> float:
        """Until the poll, or until the first held key may be tried again if sooner."""
        if not self._holds:
            return POLL_INTERVAL_S
        soonest = min(self._holds.values()) - time.monotonic()
        return min(POLL_INTERVAL_S, max(HOLD_WAKE_MIN_S, soonest))

    def _count_quarantined(self, topic: str, error_class: str) -> None:
        self.quarantined += 1
        self._quarantine_known = True
        self._stats_at = 0.0  # report the new number at once
        metrics.RELAY_QUARANTINED.labels(topic.removeprefix(self.topic_prefix), error_class).inc()

    async def _update_stats(self, conn: asyncpg.Connection) -> None:
        now = time.monotonic()
        if now - self._stats_at < STATS_INTERVAL_S:
            return
        self._stats_at = now
        stats = await outbox_stats(conn)
        # Only this relay quarantines (under the lock) and a retry only releases: a count read
        # here can be stale only towards "some are quarantined", which costs one lookup a round.
        self._quarantine_known = stats.quarantined > 0
        metrics.OUTBOX_PENDING.set(stats.pending)
        metrics.OUTBOX_OLDEST_AGE.set(stats.oldest_pending_age_s)
        metrics.OUTBOX_QUARANTINED.set(stats.quarantined)

    async def _prune(self, conn: asyncpg.Connection) -> None:
        """When due, a few bounded statements of the sweep through the table."""
        now = time.monotonic()
        if now < self._prune_due_at:
            return
        for _ in range(self.prune_statements_per_round):
            step = await prune_published(
                conn, self._prune_after_id, self.prune_rows_per_statement, self.retention_s
            )
            if step.deleted:
                self.pruned += step.deleted
                metrics.OUTBOX_PRUNED.inc(step.deleted)
            swept = step.examined < self.prune_rows_per_statement or step.reached_young
            if swept or step.last_id is None:
                self._prune_after_id = 0  # the rest is too young: start over next time
                self._prune_due_at = now + self.prune_interval_s
                return
            self._prune_after_id = step.last_id
        self._prune_due_at = now + PRUNE_BACKLOG_INTERVAL_S

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()


async def _unavailable_topics(
    producer: AIOKafkaProducer, topics: Iterable[str], *, refresh: bool = False
) -> dict[str, tuple[str, str]]:
    """The topics the producer cannot write, with (error class, message): missing from the
    cluster's metadata, or not authorized. Topics it knows nothing of yet (and, with `refresh`,
    all of them) are looked up with one metadata request; KafkaError when that fails (then the
    broker is at fault, not the rows)."""
    client = producer.client
    wanted = set(topics)
    check = wanted if refresh else {t for t in wanted if not client.cluster.partitions_for_topic(t)}
    if not check:
        return {}
    for topic in check:
        client.add_topic(topic)
    try:
        updated = await asyncio.wait_for(client.force_metadata_update(), METADATA_TIMEOUT_S)
    except TimeoutError:
        updated = False
    if not updated:
        raise KafkaError("cluster metadata unavailable")
    down: dict[str, tuple[str, str]] = {}
    for topic in sorted(check):
        if topic in client.cluster.unauthorized_topics:
            down[topic] = ("TopicAuthorizationFailedError", f"not authorized to access {topic}")
        elif not client.cluster.partitions_for_topic(topic):
            down[topic] = ("UnknownTopicOrPartitionError", f"topic {topic} does not exist")
    if down and not set(client.cluster.topics()) - down.keys():
        # Metadata that knows none of the relay's topics is a broker's state (still starting,
        # a wrong cluster), not evidence against the rows.
        raise KafkaError("cluster metadata lists none of the relay's topics")
    return down


async def _unavailable_topics_or_none(
    producer: AIOKafkaProducer, topics: Iterable[str]
) -> dict[str, tuple[str, str]]:
    """As `_unavailable_topics` with fresh metadata; none when metadata cannot be had."""
    try:
        return await _unavailable_topics(producer, topics, refresh=True)
    except KafkaError:
        return {}


async def _submit(
    producer: AIOKafkaProducer,
    rows: Sequence[OutboxRow],
    traceparents: Sequence[str | None],
    failed_keys: set[bytes],
    in_flight: dict[asyncio.Future[Any], list[OutboxRow]],
    result: SendResult,
) -> None:
    """Hand the rows to the producer in id order, as record batches of one partition each,
    which the producer's own batching would make of them too (up to its batch size, in order
    per partition): one call and one acknowledgement per batch rather than per record, ~3.5 µs
    of the relay's CPU a row instead of ~11 (docs/benchmarks.md, fourteenth round). Each key
    lands in the partition the default partitioner gives it (`key_partitioner`). A row too large
    to share a batch goes alone through `send`, which checks its size as before. Raises the
    broker's faults; a row's own fault fails its batch's rows, and their keys' later rows stay
    out of the round."""
    batches: dict[tuple[str, int], tuple[BatchBuilder, list[OutboxRow]]] = {}
    partitions: dict[str, list[int]] = {}

    def refused(batch: list[OutboxRow], error: KafkaError) -> None:
        """The producer refused these rows for a reason of theirs; a broker fault is raised."""
        if not is_row_fault(error):
            raise error
        result.failures += [RowFailure(r, type(error).__name__, str(error)) for r in batch]
        failed_keys.update(r.key for r in batch)

    async def submit(tp: tuple[str, int]) -> None:
        builder, batch = batches.pop(tp)
        builder.close()  # nothing but these rows, in this order
        try:
            in_flight[await producer.send_batch(builder, tp[0], partition=tp[1])] = batch
        except KafkaError as error:
            refused(batch, error)

    for row, traceparent in zip(rows, traceparents, strict=True):
        if row.key in failed_keys:
            continue
        headers = [("content-type", b"application/cloudevents+json")]
        if traceparent:
            headers.append(("traceparent", traceparent.encode()))
        of_topic = partitions.get(row.topic)
        if of_topic is None:
            of_topic = partitions[row.topic] = sorted(await producer.partitions_for(row.topic))
        tp = (row.topic, key_partitioner(row.key, of_topic, of_topic))
        if len(row.payload) + len(row.key) > ALONE_BYTES_MIN:
            if tp in batches:  # the rows before it in its partition go first
                await submit(tp)
                if row.key in failed_keys:
                    continue
            try:
                in_flight[
                    await producer.send(row.topic, row.payload, key=row.key, headers=headers)
                ] = [row]
            except KafkaError as error:
                refused([row], error)
            continue
        entry = batches.get(tp)
        if entry is None:
            entry = batches[tp] = (producer.create_batch(), [])
        if entry[0].append(key=row.key, value=row.payload, timestamp=None, headers=headers) is None:
            await submit(tp)  # full: it goes, the row starts the next one
            if row.key in failed_keys:
                continue
            entry = batches[tp] = (producer.create_batch(), [])
            appended = entry[0].append(
                key=row.key, value=row.payload, timestamp=None, headers=headers
            )
            assert appended is not None, "an empty batch takes any row"
        entry[1].append(row)
    for tp in list(batches):
        await submit(tp)


def _abandon(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Stop waiting for these records; their outcome is read and dropped when it comes."""
    for future in futures:
        future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _check_order(result: SendResult) -> None:
    """A row published after an older row of its key failed, in one round (a record refused by
    the broker alone, in its own producer batch): logged, as it breaks per-key order."""
    first_failed: dict[bytes, int] = {}
    for failure in result.failures:
        first_failed.setdefault(failure.row.key, failure.row.id)
    for row in result.published:
        older = first_failed.get(row.key)
        if older is not None and older < row.id:
            log.error(
                "outbox row published ahead of an older row of its key",
                extra={"outbox_id": row.id, "older_outbox_id": older, "topic": row.topic},
            )


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True when stop was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def build_relay_app(
    database_url: str,
    bootstrap_servers: str,
    batch_rows_max: int,
    lag_monitor: LagMonitor | None = None,
    kafka_security: dict[str, Any] | None = None,
    *,
    topic_prefix: str = "",
    quarantine_attempts: int = QUARANTINE_ATTEMPTS,
    retention_s: float = OUTBOX_RETENTION_S,
) -> http.ASGIApp:
    """The relay as an ASGI app: the relay loop (and the consumer lag measurement of every
    flow, which must go on when no worker runs) lives for the app's lifespan."""
    relay = Relay(
        database_url,
        bootstrap_servers,
        batch_rows_max,
        kafka_security or {},
        topic_prefix=topic_prefix,
        quarantine_attempts=quarantine_attempts,
        retention_s=retention_s,
    )
    stop = asyncio.Event()

    async def ready() -> str | None:
        # A standby relay is healthy and ready: it takes over when the active one dies.
        return None

    async def lifespan(scope: http.Scope, receive: http.Receive, send: http.Send) -> None:  # noqa: ARG001
        task: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                metrics.set_build_info("relay")
                task = asyncio.create_task(relay.run(stop))
                if lag_monitor is not None:
                    lag_monitor.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if lag_monitor is not None:
                    await lag_monitor.stop()
                stop.set()
                if task is not None:
                    await task
                tracing.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return http.router(http.routes(ready), lifespan)
