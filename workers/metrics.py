"""Ledgerflow's own Prometheus metrics, on the default registry (with process and GC collectors).

Labels are bounded: flow, outcome, reason code, topic, cause. Never an account or customer id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

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
    "Time from a batch's arrival to its offsets being committed.",
    ["flow"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DB_RETRIES = Counter(
    "ledgerflow_db_retries",
    "Batch transactions retried, by cause (deadlock, serialization, unique_violation, ...).",
    ["cause"],
)
BATCH_FAILURES = Counter(
    "ledgerflow_batch_failures",
    "Batches that failed and will be redelivered, by error class.",
    ["flow", "error_class"],
)
DEAD_LETTERS = Counter(
    "ledgerflow_dead_letters",
    "Messages sent to a dead-letter topic, by original topic.",
    ["topic"],
)
OFFSET_COMMIT_FAILURES = Counter(
    "ledgerflow_offset_commit_failures",
    "Offset commits that failed (e.g. after a rebalance); redelivery is harmless.",
    ["flow"],
)
LAST_PROCESSED = Gauge(
    "ledgerflow_last_processed_timestamp_seconds",
    "Unix time of the last batch committed, by flow.",
    ["flow"],
)
ASSIGNED_PARTITIONS = Gauge(
    "ledgerflow_assigned_partitions",
    "Partitions of its command topic this process consumes, by flow.",
    ["flow"],
)
OUTBOX_PENDING = Gauge("ledgerflow_outbox_pending_rows", "Outbox rows not yet published.")
OUTBOX_OLDEST_AGE = Gauge(
    "ledgerflow_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row."
)
RELAY_PUBLISHED = Counter("ledgerflow_relay_published", "Events published by the relay.")
RELAY_ERRORS = Counter(
    "ledgerflow_relay_errors", "Relay publish rounds that failed.", ["error_class"]
)
RELAY_ACTIVE = Gauge("ledgerflow_relay_active", "1 when this relay holds the relay lock.")
BUILD_INFO = Info("ledgerflow_build", "Version of the running Ledgerflow.")
