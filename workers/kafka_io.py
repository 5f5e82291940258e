"""Kafka clients that are not FastStream subscribers: the idempotent producer and offset commits."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import DefaultPartitioner, murmur2

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from aiokafka import AIOKafkaConsumer

    from ledgerflow.workers.records import Record

log = logging.getLogger("ledgerflow.worker")

PRODUCER_REQUEST_BYTES_MAX = 1024 * 1024
# One partition's record batch, at most (aiokafka's default is 16 KiB, ~20 result events). A
# relay round of 500 events then went out as ~25 batches over several produce requests, each
# acknowledged before the next (idempotence: one request in flight per partition); per record,
# the producer used 17-19 µs of CPU and the broker 11-18 µs. At 256 KiB: 11 and 2-3 µs
# (docs/benchmarks.md, the ninth round). Below the broker's message.max.bytes (1 MiB).
PRODUCER_BATCH_BYTES_MAX = 256 * 1024
# Keys whose partition hash is remembered (`key_partitioner`): a few MiB, and more than the
# wallets a burst on one machine touches (docs/benchmarks.md, the ninth round).
KEY_HASHES_MAX = 16_384
PRODUCER_LINGER_MS = 2
PRODUCER_REQUEST_TIMEOUT_MS = 30_000
# An offset commit waits this long at most. aiokafka retries a commit while it finds no
# coordinator, and the next batch waits for the commit before it: unbounded, a commit that never
# lands stops the flow's consumer, which then leaves its group for want of polls
# (max_poll_interval_ms, 120 s) and does not rejoin. A commit given up is a redelivery at worst.
COMMIT_TIMEOUT_S = 30.0


@functools.lru_cache(maxsize=KEY_HASHES_MAX)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


_UNKEYED = DefaultPartitioner()


def key_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partitioner (the Java client's murmur2 of the key, so a key lands where
    any Kafka client would put it), with each key's hash remembered: aiokafka's murmur2 is
    pure Python, ~5 µs a key, and a wallet's events come again and again."""
    if key is None:
        return int(_UNKEYED(key, all_partitions, available))
    return all_partitions[_key_hash(key) % len(all_partitions)]


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
        max_batch_size=PRODUCER_BATCH_BYTES_MAX,
        partitioner=key_partitioner,
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


class OffsetCommits:
    """One flow's offset commits, sent in order with at most one in flight.

    A batch's commit overlaps the next batch: the handler sends it and returns, and the next
    batch, once its own transaction committed, waits for it before sending its own. Commits land
    in order, so a later batch's offsets are never overwritten by an earlier one's. Once
    `drain` ran (graceful shutdown, before the consumer stops) every commit is awaited where it
    is sent, so a clean stop leaves nothing applied uncommitted.
    """

    def __init__(self, on_failure: Callable[[], None], timeout_s: float = COMMIT_TIMEOUT_S) -> None:
        self._on_failure = on_failure
        self._timeout_s = timeout_s
        self._in_flight: asyncio.Task[None] | None = None
        self._draining = False

    async def send(self, consumer: AIOKafkaConsumer, records: Sequence[Record]) -> None:
        await self.settle()
        if self._draining:
            await self._commit(consumer, records)
        else:
            self._in_flight = asyncio.create_task(self._commit(consumer, records))

    async def settle(self) -> None:
        """Wait for the commit in flight, if any."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            await in_flight

    async def drain(self) -> None:
        """Every commit from now on completes before `send` returns; the one in flight too."""
        self._draining = True
        await self.settle()

    async def _commit(self, consumer: AIOKafkaConsumer, records: Sequence[Record]) -> None:
        """A failed commit (partitions revoked in a rebalance, a stopped client) is counted, never
        raised: the new owner gets the batch again, and the idempotency records make that
        redelivery change nothing. So is one that takes longer than `timeout_s`."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await consumer.commit(next_offsets(records))
        except (CommitFailedError, IllegalStateError, KafkaError):
            self._on_failure()
        except TimeoutError:
            log.warning("offset commit given up", extra={"timeout_s": self._timeout_s})
            self._on_failure()
        except Exception as error:  # unexpected from the client: still only a redelivery
            log.warning("offset commit failed", extra={"error_class": type(error).__name__})
            self._on_failure()


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
