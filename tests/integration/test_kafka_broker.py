"""The broker is real Apache Kafka 4.x and behaves like one: round trips, idempotent producers
and consumer-group rebalances (the things an in-memory fake cannot show)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import ApiVersionRequest

from ledgerflow.testkit.plugin import KafkaServer, create_topics, unique_group, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.integration

# Kafka protocol API keys (https://kafka.apache.org/protocol#protocol_api_keys).
FETCH = 1
OFFSET_COMMIT = 8
SHARE_FETCH = 78  # KIP-932 share groups: brokers before 4.0 do not know this API
REBALANCE_TIMEOUT_S = 30.0


async def _api_versions(bootstrap: str) -> dict[int, tuple[int, int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        response = await admin._send_request(ApiVersionRequest())
    finally:
        await admin.close()
    return {key: (low, high) for key, low, high in response.api_versions}


async def test_broker_is_apache_kafka_4(kafka: KafkaServer) -> None:
    """Kafka 4.0 removed the protocol versions deprecated in 3.x (KIP-896: Fetch < 4 and
    OffsetCommit < 2 are gone) and added share-group APIs (KIP-932). Only a 4.x broker both
    lacks the former and offers the latter."""
    versions = await _api_versions(kafka.bootstrap_servers)
    assert versions[FETCH][0] >= 4, versions[FETCH]
    assert versions[OFFSET_COMMIT][0] >= 2, versions[OFFSET_COMMIT]
    assert SHARE_FETCH in versions


async def test_produce_consume_round_trip(kafka: KafkaServer, kafka_topic_prefix: str) -> None:
    topic = f"{kafka_topic_prefix}roundtrip"
    await create_topics(kafka.bootstrap_servers, [topic], partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(20)}
        for key, value in sent.items():
            await producer.send_and_wait(topic, value, key=key, headers=[("h", b"1")])
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=unique_group("roundtrip"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: dict[bytes, bytes] = {}
    try:

        async def drained() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    assert record.key is not None
                    assert record.value is not None
                    assert record.headers == (("h", b"1"),)
                    received[record.key] = record.value
            return len(received) >= len(sent)

        await wait_until(drained, timeout_s=30, interval_s=0, message="all 20 records consumed")
    finally:
        await consumer.stop()
    assert received == sent


async def test_idempotent_producer(kafka: KafkaServer, kafka_topic_prefix: str) -> None:
    """InitProducerId must succeed and every message must arrive exactly once, in order."""
    topic = f"{kafka_topic_prefix}idempotent"
    await create_topics(kafka.bootstrap_servers, [topic], partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic, str(i).encode(), key=b"k") for i in range(200)]
        metadata = await asyncio.gather(*futures)
        assert producer._txn_manager is not None
        assert producer._txn_manager.producer_id >= 0  # the broker handed out a producer id
    finally:
        await producer.stop()
    assert [m.offset for m in metadata] == list(range(200))

    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    values: list[int] = []
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)

        async def all_read() -> bool:
            batch = await consumer.getmany(partition, timeout_ms=200)
            values.extend(int(r.value) for r in batch.get(partition, []) if r.value is not None)
            return len(values) >= 200

        await wait_until(all_read, timeout_s=30, interval_s=0, message="200 records consumed")
    finally:
        await consumer.stop()
    assert values == list(range(200))


class _Recorder(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned: list[frozenset[TopicPartition]] = []
        self.revoked: list[frozenset[TopicPartition]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.revoked.append(frozenset(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned.append(frozenset(assigned))


@contextlib.asynccontextmanager
async def _group_member(
    bootstrap: str, topic: str, group: str
) -> AsyncIterator[tuple[AIOKafkaConsumer, _Recorder]]:
    """A consumer that keeps polling in the background, as a real worker would."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=300,  # members notice a rebalance within a heartbeat
        session_timeout_ms=10_000,
    )
    recorder = _Recorder()
    consumer.subscribe([topic], listener=recorder)
    await consumer.start()

    async def poll() -> None:
        while True:
            await consumer.getmany(timeout_ms=100)

    task = asyncio.create_task(poll())
    try:
        yield consumer, recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


def _split_evenly(members: list[AIOKafkaConsumer], partitions: int) -> bool:
    """True when the members hold disjoint, non-empty sets that together cover the topic."""
    sets = [m.assignment() for m in members]
    if any(not s for s in sets):
        return False
    union = set().union(*sets)
    return len(union) == partitions and sum(len(s) for s in sets) == partitions


async def test_group_splits_partitions_and_rebalances(
    kafka: KafkaServer, kafka_topic_prefix: str
) -> None:
    topic = f"{kafka_topic_prefix}rebalance"
    await create_topics(kafka.bootstrap_servers, [topic], partitions=6)
    group = unique_group("rebalance")
    bootstrap = kafka.bootstrap_servers

    async with (
        _group_member(bootstrap, topic, group) as (first, first_events),
        _group_member(bootstrap, topic, group) as (second, _),
    ):
        await wait_until(
            lambda: _split_evenly([first, second], 6),
            timeout_s=REBALANCE_TIMEOUT_S,
            message="two members splitting 6 partitions",
        )
        before = first.assignment()
        assert len(before) == 3
        assert len(second.assignment()) == 3
        assignments_before = len(first_events.assigned)

        async with _group_member(bootstrap, topic, group) as (third, _):
            await wait_until(
                lambda: (
                    _split_evenly([first, second, third], 6)
                    and len(first_events.assigned) > assignments_before
                ),
                timeout_s=REBALANCE_TIMEOUT_S,
                message="three members splitting 6 partitions after the third joined",
            )
            assert len(first.assignment()) == 2
            assert len(second.assignment()) == 2
            assert len(third.assignment()) == 2
            assert first.assignment() != before
            assert first_events.revoked  # the join made the existing members give up partitions
