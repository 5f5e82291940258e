"""The worker process: one FastStream batch subscriber per command topic, plus HTTP endpoints.

Offsets are committed by hand (AckPolicy.MANUAL) after the batch's transaction committed, for
exactly the records of that batch. A failed batch is rewound (seek to its first offsets) and
retried after a bounded backoff, so nothing is skipped (docs/decisions/ack-policy.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from aiokafka import ConsumerRecord, TopicPartition
from faststream import AckPolicy
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from ledgerflow.contracts.topics import CASHOUT, WORKERS, flows_of_worker
from ledgerflow.ledger_db.apply import LedgerWriter, load_tier_limits
from ledgerflow.ledger_db.pii import DEV_KEY_ID
from ledgerflow.ledger_db.rules import FeeSchedule, TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.workers import http, metrics, tracing
from ledgerflow.workers.auth import Authenticator, AuthMode
from ledgerflow.workers.batch import BatchProcessor, BatchResult, PoisonUnproven
from ledgerflow.workers.dead_letters import DeadLetter, send_dead_letters
from ledgerflow.workers.expiry import HoldExpiry
from ledgerflow.workers.failures import is_infrastructure
from ledgerflow.workers.fetch_hold import hold_when_idle
from ledgerflow.workers.kafka_io import OffsetCommits, idempotent_producer, rewind
from ledgerflow.workers.kafka_security import faststream_security, kafka_client_options
from ledgerflow.workers.lag import Lag, LagMonitor, Watched
from ledgerflow.workers.records import header_text
from ledgerflow.workers.settings import content_hash_key, pii_vault
from ledgerflow.workers.stall import FlowActivity, StallWatch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import asyncpg
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from ledgerflow.contracts.topics import Flow
    from ledgerflow.workers.settings import Settings

log = logging.getLogger("ledgerflow.worker")
# FastStream logs through this one, into the process' JSON lines (workers/logging.py).
FASTSTREAM_LOG = logging.getLogger("ledgerflow.faststream")

FLOW_NAMES = WORKERS  # the worker kinds: onboarding, cashin, transfer, cashout
FAILURE_BACKOFF_MAX_S = 5.0
# Non-transient failures of batches holding a record before such a batch is split, record by
# record, to find the poison message.
POISON_ATTEMPTS_MAX = 3
# Records remembered per flow with their failure counts; more means a flood of failures: forget.
SUSPECTS_MAX = 10_000
# Kafka's group protocol bounds: a batch must finish well within max_poll_interval_ms.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 3_000
MAX_POLL_INTERVAL_MS = 120_000
GRACEFUL_TIMEOUT_S = 15.0
# A stalled consumer's stop is waited for this long; a client stuck in its group protocol may
# never finish stopping, and is then left behind for a new one.
CONSUMER_STOP_TIMEOUT_S = 10.0


def group_id(flow: Flow) -> str:
    return f"ledgerflow.{flow.name}"


def tier_limits(settings: Settings, table: dict[str, TierLimits]) -> dict[str, TierLimits]:
    """The tier_limits table, with LEDGERFLOW_BASIC_* applied over the basic tier when set.

    Without a basic row there is nothing to apply them over: the tier fails closed
    (ledger_db/rules.py), rather than becoming a row with only these two bounds.
    """
    limits = dict(table)
    basic = limits.get("basic:*")
    if basic is None:
        return limits
    if "basic_single_amount_max" in settings.model_fields_set:
        basic = replace(basic, single_amount_max=settings.basic_single_amount_max)
    if "basic_balance_max" in settings.model_fields_set:
        basic = replace(basic, balance_max=settings.basic_balance_max)
    limits["basic:*"] = basic
    return limits


def authenticator(settings: Settings) -> Authenticator | None:
    if settings.auth_mode is AuthMode.OFF:
        return None
    if not (settings.auth_jwks_file or settings.auth_jwks_url):
        raise SystemExit(
            "LEDGERFLOW_AUTH_MODE=required needs LEDGERFLOW_AUTH_JWKS_FILE or "
            "LEDGERFLOW_AUTH_JWKS_URL (the identity provider's signing keys)"
        )
    return Authenticator(
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        jwks_file=settings.auth_jwks_file,
        jwks_url=settings.auth_jwks_url,
        leeway_s=settings.auth_leeway_s,
        max_token_age_s=settings.auth_max_token_age_s,
        jwks_cache_s=settings.auth_jwks_cache_s,
        jwks_refresh_min_s=settings.auth_jwks_refresh_min_s,
    )


async def _raw(message: KafkaMessage) -> KafkaMessage:
    """The handler's one argument is the message itself: no JSON decoding by FastStream
    (`contracts.parsing` parses the bytes once, strictly), and nothing to inject."""
    return message


async def _batch(
    records: tuple[ConsumerRecord[bytes, bytes], ...],
    parse: Callable[[tuple[ConsumerRecord[bytes, bytes], ...]], Awaitable[KafkaMessage]],
) -> KafkaMessage:
    """FastStream's batch message, with the headers of the first record only, as text that
    cannot fail to decode.

    FastStream's own parser decodes every header of every record as strict UTF-8: one binary
    or null header value anywhere raised before the handler ran, and FastStream dropped the
    whole batch with a log line (its offsets were committed by the next batch). The handler
    reads each record's raw headers (`records.header`), which is where a header's meaning is
    judged."""
    first = records[0]
    readable = [(name, header_text(value).encode()) for name, value in first.headers]
    message = await parse((replace(first, headers=readable),))
    message.raw_message = records
    message.body = [record.value or b"" for record in records]
    message.message_id = f"{first.offset}-{records[-1].offset}-{first.timestamp}"
    return message


@dataclass(slots=True)
class WorkerState:
    settings: Settings
    pool: asyncpg.Pool | None = None
    producer: AIOKafkaProducer | None = None
    processors: dict[str, BatchProcessor] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    # Suspect failures per record (topic, partition, offset), by flow, and when the earliest
    # of them first failed (time.monotonic()).
    suspects: dict[str, Counter[tuple[str, int, int]]] = field(default_factory=dict)
    suspect_since: dict[str, float] = field(default_factory=dict)
    # When a batch of the flow last applied commands (time.monotonic()): proof that the
    # infrastructure works, so a record failing alone is the record's fault.
    applied_at: dict[str, float] = field(default_factory=dict)
    # Partitions paused because their dead letter was refused, by flow.
    held: dict[str, set[TopicPartition]] = field(default_factory=dict)
    # Each flow's FastStream subscriber (its consumer, once started).
    subscribers: dict[str, Any] = field(default_factory=dict)
    # Each flow's offset commits (one in flight while the next batch runs).
    commits: dict[str, OffsetCommits] = field(default_factory=dict)
    # Batches handed to each flow's handler, and the flows handling one now (the stall watch).
    deliveries: Counter[str] = field(default_factory=Counter)
    busy: set[str] = field(default_factory=set)
    # Flows whose consumer is being restarted after a stall.
    restarting: set[str] = field(default_factory=set)

    def activity(self, flow: str) -> FlowActivity:
        return FlowActivity(
            deliveries=self.deliveries[flow],
            busy=flow in self.busy,
            excused=bool(self.failures.get(flow) or self.held.get(flow)),
        )

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        assert self.producer is not None
        return await send_dead_letters(self.producer, letters)


def build_worker_app(settings: Settings, flow_names: Sequence[str]) -> AsgiFastStream:
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        security=faststream_security(settings),
        client_id="ledgerflow-worker",
        allow_auto_create_topics=False,
        graceful_timeout=GRACEFUL_TIMEOUT_S,
        middlewares=_observability(settings, flows_of(flow_names)),
        logger=FASTSTREAM_LOG,
        log_level=logging.DEBUG,  # its per-batch "Received"/"Processed" lines: DEBUG only
        # No dependency injection: the handler takes the message from the decoder (`_raw`).
        # Injected, the message is a context field that FastDepends resolves in a worker
        # thread, a thread hop on every batch.
        apply_types=False,
    )
    state = WorkerState(settings)
    flows = flows_of(flow_names)
    stalls = StallWatch(settings.consumer_stall_rounds) if settings.consumer_stall_rounds else None

    async def lag_round(lags: list[Lag]) -> None:
        if stalls is None or state.pool is None:
            return  # off, or still starting
        for flow in flows:
            if flow.name in state.restarting:
                continue
            flow_lags = [lag for lag in lags if lag.watched.flow == flow.name]
            if stalls.observe(flow.name, flow_lags, state.activity(flow.name)):
                waiting = sum(lag.messages for lag in flow_lags)
                await _restart_consumer(state, flow, waiting, install_fetch_hold)

    lag = LagMonitor(
        settings.kafka_bootstrap_servers,
        [watched_group(settings, flow) for flow in flows],
        settings.lag_interval_ms / 1000,
        kafka_client_options(settings),
        on_round=lag_round,
    )
    for flow in flows:
        _subscribe(broker, state, flow)
    expiry = HoldExpiry(settings.hold_expiry_interval_s, settings.hold_expiry_round_max)

    async def startup() -> None:
        state.pool = await create_pool(
            settings.database_url.get_secret_value(),
            size_max=settings.db_pool_size_max,
            statement_timeout_ms=settings.statement_timeout_ms,
            lock_timeout_ms=settings.lock_timeout_ms,
            idle_in_transaction_timeout_ms=settings.idle_in_transaction_timeout_ms,
        )
        metrics.watch_pool(state.pool)
        metrics.set_build_info("worker")
        for flow in flows:
            metrics.initialize_flow(flow.name, flow.command_topic)
        lag.start()
        state.producer = idempotent_producer(
            settings.kafka_bootstrap_servers, "ledgerflow-dlq", kafka_client_options(settings)
        )
        await state.producer.start()
        table = await load_tier_limits(state.pool)
        vault = pii_vault(settings)
        if vault.active_key_id == DEV_KEY_ID:
            log.warning("personal data is encrypted with the public development key")
        content_key = content_hash_key(settings)
        if content_key.is_dev:
            log.warning("content hashes are keyed with the public development key")
        writer = LedgerWriter(
            state.pool,
            tier_limits(settings, table),
            settings.topic_prefix,
            settings.db_retries_max,
            vault=vault,
            content_hash_key=content_key,
        )
        writer.hold_expires_s = settings.hold_expires_s
        writer.default_fee = FeeSchedule(settings.merchant_fee_bps, settings.merchant_fee_fixed)
        if CASHOUT in flows:  # the cash-out worker expires holds: no process kind of its own
            expiry.start(writer)
        verifier = authenticator(settings)
        for flow in flows:
            state.processors[flow.name] = BatchProcessor(
                flow,
                writer,
                state.send_dead_letters,
                settings.topic_prefix,
                settings.message_bytes_max,
                settings.fault_poison_marker.encode(),
                verifier,
            )

    def install_fetch_hold(name: str, consumer: AIOKafkaConsumer) -> None:
        hold_when_idle(
            consumer, settings.idle_fetch_hold_ms, metrics.CONSUMER_IDLE.labels(name).set
        )

    async def consuming() -> None:
        for name, subscriber in state.subscribers.items():
            if subscriber.consumer is not None:
                install_fetch_hold(name, subscriber.consumer)

    async def stopping() -> None:
        # Before the broker stops its consumers: the commit in flight lands, and the batch a
        # handler may still finish commits before it returns.
        for commits in state.commits.values():
            await commits.drain()

    async def shutdown() -> None:
        await expiry.stop()
        await lag.stop()
        metrics.watch_pool(None)
        tracing.flush()
        if state.producer is not None:
            await state.producer.stop()
        if state.pool is not None:
            await state.pool.close()

    async def ready() -> str | None:
        if state.pool is None:
            return "starting"
        try:
            await state.pool.fetchval("SELECT 1")
        except Exception as error:  # any failure means not ready; the error class says why
            return f"postgresql unavailable: {type(error).__name__}"
        if not await broker.ping(timeout=1.0):
            return "kafka unavailable"
        if state.restarting:
            return "consumer restarting after a stall: " + ", ".join(sorted(state.restarting))
        for flow in flows:
            consumer = getattr(state.subscribers[flow.name], "consumer", None)
            assigned = len(consumer.assignment()) if consumer is not None else 0
            metrics.ASSIGNED_PARTITIONS.labels(flow.name).set(assigned)
            if not assigned:
                # Consuming means holding partitions: until the group has assigned them,
                # published commands wait (keep replicas ≤ partitions, see docs/operations).
                return "no partitions assigned yet"
        if any(state.failures.values()):
            return "batches are failing: " + ", ".join(k for k, v in state.failures.items() if v)
        if any(state.held.values()):
            return "dead letters refused, partitions held: " + ", ".join(
                f"{tp.topic}[{tp.partition}]" for tps in state.held.values() for tp in sorted(tps)
            )
        return None

    return AsgiFastStream(
        broker,
        asgi_routes=http.routes(ready),
        on_startup=[startup],
        after_startup=[consuming],
        on_shutdown=[stopping],
        after_shutdown=[shutdown],
        logger=FASTSTREAM_LOG,
    )


def flows_of(worker_names: Sequence[str]) -> list[Flow]:
    """The flows the named worker kinds consume, in registry order."""
    return [flow for name in worker_names for flow in flows_of_worker(name)]


def _observability(settings: Settings, flows: Sequence[Flow]) -> list[Any]:
    """Tracing outermost (its span covers the rest), then FastStream's Prometheus middleware
    and the command latency histogram (docs/metrics.md)."""
    topics = {settings.topic_prefix + flow.command_topic: flow.name for flow in flows}
    return [tracing.middleware(topics), *metrics.middlewares(topics)]


def watched_group(settings: Settings, flow: Flow) -> Watched:
    """The consumer group of a flow, as the lag monitors watch it."""
    prefix = settings.topic_prefix
    return Watched(flow.name, prefix + group_id(flow), prefix + flow.command_topic)


def _subscribe(broker: KafkaBroker, state: WorkerState, flow: Flow) -> None:
    settings = state.settings
    subscriber = broker.subscriber(
        settings.topic_prefix + flow.command_topic,
        group_id=settings.topic_prefix + group_id(flow),
        batch=True,
        max_records=settings.batch_records_max,
        batch_timeout_ms=max(1, settings.batch_wait_ms),
        # Let the broker gather a batch for up to batch_wait_ms: fewer, larger transactions,
        # since every commit costs a disk flush.
        fetch_min_bytes=settings.fetch_min_bytes,
        fetch_max_wait_ms=settings.fetch_max_wait_ms or max(1, settings.batch_wait_ms),
        # At-least-once in: FastStream's default (ACK_FIRST) is at-most-once, wrong for money.
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        parser=_batch,
        decoder=_raw,
        title=f"{flow.name} worker",
    )
    # Kept by flow: the broker's own list of subscribers is not in registration order.
    state.subscribers[flow.name] = subscriber
    commits = state.commits[flow.name] = OffsetCommits(
        metrics.OFFSET_COMMIT_FAILURES.labels(flow.name).inc
    )

    @subscriber
    async def handle(msg: KafkaMessage) -> None:
        state.deliveries[flow.name] += 1
        state.busy.add(flow.name)
        try:
            await _handle(state, flow, commits, msg)
        finally:
            state.busy.discard(flow.name)


async def _handle(
    state: WorkerState, flow: Flow, commits: OffsetCommits, msg: KafkaMessage
) -> None:
    """One batch of a flow: applied, committed, or rewound to be tried again."""
    records = msg.raw_message
    if not isinstance(records, tuple):
        records = (records,)
    started = time.perf_counter()
    processor = state.processors[flow.name]
    consumer = cast("AIOKafkaConsumer", msg.consumer)  # FastStream types it as a protocol
    # Counted per record, not per flow: after a rewind the next batch may hold only other
    # partitions' records, and its success must not reset the poison message's count.
    suspects = state.suspects.setdefault(flow.name, Counter())
    positions = [(r.topic, r.partition, r.offset) for r in records]
    try:
        if any(suspects[p] >= POISON_ATTEMPTS_MAX for p in positions):
            # The batch failed again and again, not for the infrastructure: find the poison
            # message(s) one by one and dead-letter them, so the partition moves on.
            since = state.suspect_since.get(flow.name, started)
            result = await processor.process_isolating(
                records,
                flow_applied_since=state.applied_at.get(flow.name, 0.0) > since,
                alone_long_enough=all(suspects[p] >= 2 * POISON_ATTEMPTS_MAX for p in positions),
            )
        else:
            result = await processor.process(records)
    except Exception as error:
        await _failed(state, flow, consumer, records, error)
        return
    if result.interrupted is not None:
        # Isolating stopped short: keep what it applied or dead-lettered, retry the rest.
        if result.handled:
            await commits.send(consumer, result.handled)
        for record in result.handled:
            suspects.pop((record.topic, record.partition, record.offset), None)
        done = {(r.topic, r.partition, r.offset) for r in result.handled}
        rest = [r for r in records if (r.topic, r.partition, r.offset) not in done]
        await _failed(state, flow, consumer, rest, result.interrupted)
        return
    state.failures[flow.name] = 0
    if result.outcomes:
        state.applied_at[flow.name] = time.monotonic()
    for record in result.handled:
        suspects.pop((record.topic, record.partition, record.offset), None)
    if not suspects:
        state.suspect_since.pop(flow.name, None)
    metrics.ASSIGNED_PARTITIONS.labels(flow.name).set(len(consumer.assignment()))
    if result.handled:
        await commits.send(consumer, result.handled)
    if result.held:
        _hold(state, flow, consumer, result)
    marker = state.settings.fault_stall_marker.encode()
    if marker and any(marker in (record.value or b"") for record in records):
        consumer.pause(*consumer.assignment())  # the test hook: fetching stops, nothing said
    metrics.BATCH_DURATION.labels(flow.name).observe(time.perf_counter() - started)
    metrics.LAST_PROCESSED.labels(flow.name).set(time.time())


async def _restart_consumer(
    state: WorkerState,
    flow: Flow,
    waiting: int,
    prepare: Callable[[str, AIOKafkaConsumer], None],
) -> None:
    """Replace a stalled flow's consumer with a new one, which joins the group afresh and reads
    on from the committed offsets. No batch is in flight (the stall watch saw none); the commit
    of the last one is settled first, so nothing applied is left uncommitted by this consumer."""
    subscriber = state.subscribers[flow.name]
    state.restarting.add(flow.name)
    metrics.CONSUMER_RESTARTS.labels(flow.name).inc()
    log.warning(
        "consumer stalled: commands wait and none is delivered; restarting it",
        extra={"flow": flow.name, "lag": waiting, "rounds": state.settings.consumer_stall_rounds},
    )
    try:
        await state.commits[flow.name].settle()
        try:
            async with asyncio.timeout(CONSUMER_STOP_TIMEOUT_S):
                await subscriber.stop()
        except TimeoutError:
            log.warning("stalled consumer did not stop; left behind", extra={"flow": flow.name})
            subscriber.consumer = None
        state.held.pop(flow.name, None)
        metrics.PARTITIONS_HELD.labels(flow.name).set(0)
        await subscriber.start()
        if subscriber.consumer is not None:
            prepare(flow.name, subscriber.consumer)
    finally:
        state.restarting.discard(flow.name)


async def _failed(
    state: WorkerState,
    flow: Flow,
    consumer: AIOKafkaConsumer,
    records: Sequence[Any],
    error: Exception,
) -> None:
    """Rewind the batch and wait before it comes again. The infrastructure's faults retry for
    as long as they last (not ready meanwhile); suspect ones count toward isolating records."""
    failures = state.failures.get(flow.name, 0)
    infrastructure = is_infrastructure(error)
    # Outages retry quickly (recovery within a second of the fault healing); a record that
    # failed alone with nothing to compare it with backs off to the ceiling.
    quick = infrastructure and not isinstance(error, PoisonUnproven)
    state.failures[flow.name] = (
        min(failures + 1, POISON_ATTEMPTS_MAX - 1) if quick else failures + 1
    )
    # An unproven verdict counts on: a lone record on an idle flow is judged in the end.
    if not infrastructure or isinstance(error, PoisonUnproven):
        suspects = state.suspects.setdefault(flow.name, Counter())
        if len(suspects) > SUSPECTS_MAX:
            suspects.clear()
        suspects.update((r.topic, r.partition, r.offset) for r in records)
        state.suspect_since.setdefault(flow.name, time.monotonic())
    metrics.BATCH_FAILURES.labels(flow.name, type(error).__name__).inc()
    log.warning(
        "batch failed, will retry",
        extra={
            "flow": flow.name,
            "error_class": type(error).__name__,
            "attempt": failures,
            "infrastructure": infrastructure,
        },
    )
    # Rewind every partition of the batch still ours to its first record (FastStream's nack
    # stops at the first revoked partition and would skip the rest).
    rewind(consumer, records)
    await asyncio.sleep(min(FAILURE_BACKOFF_MAX_S, 0.05 * 2 ** min(failures + 1, 10)))


def _hold(state: WorkerState, flow: Flow, consumer: AIOKafkaConsumer, result: BatchResult) -> None:
    """Pause the partitions whose dead letter was refused, at the refused record, and try them
    again later; the consumer goes on with every other partition."""
    held = state.held.setdefault(flow.name, set())
    assigned = consumer.assignment()
    for (topic, partition), offset in result.held.items():
        tp = TopicPartition(topic, partition)
        if tp not in assigned:
            continue  # revoked meanwhile: the new owner reads it from the committed offset
        consumer.seek(tp, offset)
        consumer.pause(tp)
        held.add(tp)
    metrics.PARTITIONS_HELD.labels(flow.name).set(len(held))

    def resume() -> None:
        for tp in list(held):
            if tp in consumer.assignment():
                consumer.resume(tp)
            held.discard(tp)
        metrics.PARTITIONS_HELD.labels(flow.name).set(len(held))

    # Loud meanwhile (metric, alert, not ready), never a silent spin; only these partitions wait.
    asyncio.get_running_loop().call_later(state.settings.held_partition_retry_s, resume)
