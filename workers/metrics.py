"""Ledgerflow's own Prometheus metrics, on the default registry (with process and GC collectors).

Every metric is documented in docs/metrics.md: what it means, its labels, what to do when it
moves. Labels are bounded: flow, outcome, reason code, topic, partition, consumer group, cause,
error class. Never an account, customer or command id.

Per-handler message counts and durations come from FastStream's own Prometheus middleware
(`faststream_*`), registered on the same registry by `middlewares()`.
"""

from __future__ import annotations

import platform
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

from faststream.__about__ import __version__ as faststream_version
from faststream._internal.middlewares import BaseMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.message import AckStatus
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ledgerflow.ledger_db.unit_of_work import RETRYABLE

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    import asyncpg
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage

COMMANDS = Counter(
    "ledgerflow_commands",
    "Commands decided, by flow, outcome and reason code.",
    ["flow", "outcome", "reason"],
)
BATCH_SIZE = Histogram(
    "ledgerflow_batch_size_commands",
    "Commands per applied batch.",
    ["flow"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000),
)
BATCH_DURATION = Histogram(
    "ledgerflow_batch_duration_seconds",
    "Time from a batch's arrival to its transaction committed and its offset commit sent.",
    ["flow"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Batches that share a wallet (or a hot merchant) take turns under their row locks: a wait
# growing toward the held time means the flow's batches queue on each other (docs/scaling.md).
LOCK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_LOCK_WAIT = Histogram(
    "ledgerflow_batch_lock_wait_seconds",
    "Time a batch's transaction took to lock the rows it decides on: waiting for other "
    "batches' locks, then the statements.",
    ["flow"],
    buckets=LOCK_BUCKETS,
)
BATCH_LOCKED = Histogram(
    "ledgerflow_batch_locked_seconds",
    "Time a batch held its row locks, from taking them to its transaction committed.",
    ["flow"],
    buckets=LOCK_BUCKETS,
)
COMMAND_LATENCY = Histogram(
    "ledgerflow_command_latency_seconds",
    "Time from a command's Kafka timestamp to its batch's transaction committed, by flow.",
    ["flow"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
DB_RETRIES = Counter(
    "ledgerflow_db_retries",
    "Batch transactions retried, by cause (deadlock, serialization, unique_violation, ...).",
    ["cause"],
)
STUCK_SESSIONS_ENDED = Counter(
    "ledgerflow_db_stuck_sessions_ended",
    "Sessions of a frozen writer (stuck in a COPY, holding row locks) ended by a writer whose "
    "lock wait timed out.",
)
BATCH_FAILURES = Counter(
    "ledgerflow_batch_failures",
    "Batches that failed and will be redelivered, by error class.",
    ["flow", "error_class"],
)
UNAUTHORIZED = Counter(
    "ledgerflow_unauthorized_commands",
    "Commands refused because their token failed verification (answered `unauthorized`).",
    ["flow"],
)
JWKS_FETCHES = Counter(
    "ledgerflow_jwks_fetches",
    "Fetches of the identity provider's signing keys (JWKS), by outcome.",
    ["outcome"],
)
DEAD_LETTERS = Counter(
    "ledgerflow_dead_letters",
    "Messages sent to a dead-letter topic, by original topic.",
    ["topic"],
)
DEAD_LETTERS_TRUNCATED = Counter(
    "ledgerflow_dead_letters_truncated",
    "Dead letters refused whole and written truncated (value cut, error kept), by original topic.",
    ["topic"],
)
DEAD_LETTERS_REFUSED = Counter(
    "ledgerflow_dead_letters_refused",
    "Dead letters refused even truncated (ACL, broker): their partition is held back.",
    ["topic", "error_class"],
)
PARTITIONS_HELD = Gauge(
    "ledgerflow_partitions_held",
    "Partitions paused because a dead letter of theirs could not be written, by flow.",
    ["flow"],
)
OFFSET_COMMIT_FAILURES = Counter(
    "ledgerflow_offset_commit_failures",
    "Offset commits that failed (e.g. after a rebalance); redelivery is harmless.",
    ["flow"],
)
CONSUMER_RESTARTS = Counter(
    "ledgerflow_consumer_restarts",
    "Consumers replaced because their group had commands waiting and they delivered none"
    " (workers/stall.py), by flow.",
    ["flow"],
)
LAST_PROCESSED = Gauge(
    "ledgerflow_last_processed_timestamp_seconds",
    "Unix time of the last batch committed, by flow.",
    ["flow"],
)
CONSUMER_IDLE = Gauge(
    "ledgerflow_consumer_idle",
    "1 while the flow's consumer waits at the broker for its first record, 0 while it fetches"
    " batches.",
    ["flow"],
)
ASSIGNED_PARTITIONS = Gauge(
    "ledgerflow_assigned_partitions",
    "Partitions of its command topic this process consumes, by flow.",
    ["flow"],
)
CONSUMER_LAG = Gauge(
    "ledgerflow_consumer_lag_messages",
    "Messages not yet committed by the consumer group: high watermark minus committed offset.",
    ["flow", "group", "topic", "partition"],
)
CONSUMER_COMMITTED_OFFSET = Gauge(
    "ledgerflow_consumer_committed_offset",
    "The consumer group's committed offset (the next offset it will process).",
    ["flow", "group", "topic", "partition"],
)
LAG_MEASUREMENT_ERRORS = Counter(
    "ledgerflow_lag_measurement_errors",
    "Consumer lag measurements that failed, by error class.",
    ["error_class"],
)
OUTBOX_PENDING = Gauge(
    "ledgerflow_outbox_pending_rows", "Outbox rows not yet published (quarantined ones aside)."
)
OUTBOX_OLDEST_AGE = Gauge(
    "ledgerflow_outbox_oldest_pending_age_seconds",
    "Age of the oldest unpublished outbox row (quarantined ones aside).",
)
OUTBOX_QUARANTINED = Gauge(
    "ledgerflow_outbox_quarantined_rows",
    "Outbox rows quarantined: not published until `ledgerflow outbox retry`.",
)
RELAY_QUARANTINED = Counter(
    "ledgerflow_relay_quarantined",
    "Outbox rows the relay quarantined, by result topic and error class.",
    ["topic", "error_class"],
)
OUTBOX_PRUNED = Counter(
    "ledgerflow_outbox_pruned", "Published outbox rows deleted after their retention period."
)
RELAY_PUBLISHED = Counter("ledgerflow_relay_published", "Events published by the relay.")
HOLDS_EXPIRED = Counter(
    "ledgerflow_holds_expired",
    "Holds (two-phase cash-outs) voided because nobody settled or returned them in time.",
)
HOLD_EXPIRY_FAILURES = Counter(
    "ledgerflow_hold_expiry_failures",
    "Expiry rounds that failed and will be tried again, by error class.",
    ["error_class"],
)
# Cumulative, like a histogram's buckets: pending holds placed at most `le` seconds ago.
HOLD_AGE_BUCKETS_S = (3_600, 86_400, 259_200, 604_800, 2_592_000)
HOLDS_PENDING = Gauge(
    "ledgerflow_holds_pending",
    "Pending holds by age: placed at most `le` seconds ago (le=+Inf: all), counted every 15 s "
    "by each cash-out worker.",
    ["le"],
)
RELAY_ERRORS = Counter(
    "ledgerflow_relay_errors", "Relay publish rounds that failed.", ["error_class"]
)
RELAY_ACTIVE = Gauge("ledgerflow_relay_active", "1 when this relay holds the relay lock.")
BUILD_INFO = Info("ledgerflow_build", "Version of the running Ledgerflow.")

# Outcomes every flow has, created at zero at startup so that a first increment shows in rate().
_BASE_OUTCOMES = (("completed", ""), ("replayed", ""), ("invalid", "invalid_command"))


def set_build_info(component: str) -> None:
    try:
        version = metadata.version("ledgerflow")
    except metadata.PackageNotFoundError:
        version = "unknown"
    BUILD_INFO.info(
        {
            "version": version,
            "component": component,
            "python": platform.python_version(),
            "faststream": faststream_version,
        }
    )


def initialize_flow(flow: str, command_topic: str) -> None:
    """Create a flow's series at zero: Prometheus' rate() and increase() cannot see the first
    increment of a series that appears with value 1, and "any dead letter" must see it."""
    for outcome, reason in _BASE_OUTCOMES:
        COMMANDS.labels(flow, outcome, reason)
    DEAD_LETTERS.labels(command_topic)
    DEAD_LETTERS_TRUNCATED.labels(command_topic)
    PARTITIONS_HELD.labels(flow).set(0)
    CONSUMER_IDLE.labels(flow).set(0)
    for cause in RETRYABLE.values():
        DB_RETRIES.labels(cause)
    BATCH_SIZE.labels(flow)
    BATCH_DURATION.labels(flow)
    BATCH_LOCK_WAIT.labels(flow)
    BATCH_LOCKED.labels(flow)
    COMMAND_LATENCY.labels(flow)
    OFFSET_COMMIT_FAILURES.labels(flow)
    CONSUMER_RESTARTS.labels(flow)


class _PoolCollector(Collector):
    """Connections of the process' asyncpg pool, read at scrape time (no polling task)."""

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self.pool
        if pool is None:
            return
        size, idle = pool.get_size(), pool.get_idle_size()
        connections = GaugeMetricFamily(
            "ledgerflow_db_pool_connections",
            "Connections of the PostgreSQL pool, by state (in_use, idle).",
            labels=["state"],
        )
        connections.add_metric(["in_use"], max(0, size - idle))
        connections.add_metric(["idle"], idle)
        yield connections
        yield GaugeMetricFamily(
            "ledgerflow_db_pool_connections_max",
            "The most connections the PostgreSQL pool opens.",
            value=pool.get_max_size(),
        )


_POOL = _PoolCollector()
REGISTRY.register(_POOL)


def watch_pool(pool: asyncpg.Pool | None) -> None:
    """Report this pool's connections (None stops reporting, e.g. at shutdown)."""
    _POOL.pool = pool


class _CommandLatencyMiddleware(BaseMiddleware[Any, Any]):
    """Observes each record's latency when its batch's handler returned without a nack (the
    batch's transaction committed and its offset commit was sent)."""

    def __init__(
        self, msg: Any, /, *, context: ContextRepo, flow_of_topic: Mapping[str, str]
    ) -> None:
        super().__init__(msg, context=context)
        self._flow_of_topic = flow_of_topic

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        result = await call_next(msg)
        if msg.committed is AckStatus.NACKED:
            return result
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        flow = self._flow_of_topic.get(records[0].topic) if records else None
        if flow is None:
            return result
        latency = COMMAND_LATENCY.labels(flow)  # a subscriber's batch holds one topic
        now_ms = time.time() * 1000
        for record in records:
            if record.timestamp is not None:
                latency.observe(max(0.0, (now_ms - record.timestamp) / 1000))
        return result


def middlewares(flow_of_topic: Mapping[str, str]) -> list[Any]:
    """FastStream's Prometheus middleware (per-handler counts and durations, `faststream_*`, on
    the default registry) and Ledgerflow's command latency. `flow_of_topic`: command topic (with
    the deployment's prefix) to flow name."""
    topics = dict(flow_of_topic)

    def latency(msg: Any, /, *, context: ContextRepo) -> _CommandLatencyMiddleware:
        return _CommandLatencyMiddleware(msg, context=context, flow_of_topic=topics)

    return [KafkaPrometheusMiddleware(registry=REGISTRY, app_name="ledgerflow"), latency]
