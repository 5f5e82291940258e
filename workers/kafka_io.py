"""Kafka clients that are not FastStream subscribers: the idempotent producer and offset commits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from aiokafka import AIOKafkaConsumer

    from ledgerflow.workers.records import Record

PRODUCER_REQUEST_BYTES_MAX = 1024 * 1024
PRODUCER_LINGER_MS = 2
PRODUCER_REQUEST_TIMEOUT_MS = 30_000


def idempotent_producer(
    bootstrap_servers: str,
    client_id: str,
    security: Mapping[str, Any] | None = None,
    *,
    request_timeout_ms: int = PRODUCER_REQUEST_TIMEOUT_MS,
) -> AIOKafkaProducer:
    """acks=all and idempotence: a retried send never duplicates or reorders within a partition.

    `security`: workers.kafka_security.kafka_client_options(settings). `request_timeout_ms` also
    bounds how long a record waits for a partition leader before its send fails.
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        **(security or {}),
        enable_idempotence=True,
        acks="all",
        linger_ms=PRODUCER_LINGER_MS,
        max_request_size=PRODUCER_REQUEST_BYTES_MAX,
        request_timeout_ms=request_timeout_ms,
    )


def next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """The offsets to commit for exactly the partitions and records this batch held."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


async def commit_offsets(consumer: AIOKafkaConsumer, records: Sequence[Record]) -> bool:
    """False when the commit failed (e.g. partitions revoked in a rebalance): the new owner gets
    the batch again, and the idempotency records make that redelivery change nothing."""
    try:
        await consumer.commit(next_offsets(records))
    except (CommitFailedError, IllegalStateError, KafkaError):
        return False
    return True


def rewind(consumer: AIOKafkaConsumer, records: Sequence[Record]) -> int:
    """Seek every still-assigned partition of a failed batch back to its first record.

    Partition by partition, so one partition revoked meanwhile (a rebalance) cannot stop the
    others from being rewound: skipping a rewind would let the next batch commit past records
    that were never applied. Returns the partitions rewound.
    """
    first: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        first[tp] = min(first.get(tp, record.offset), record.offset)
    assigned = consumer.assignment()
    rewound = 0
    for tp, offset in first.items():
        if tp in assigned:
            try:
                consumer.seek(tp, offset)
            except (IllegalStateError, KafkaError, AssertionError):
                continue
            rewound += 1
    return rewound
