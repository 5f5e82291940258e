"""The idle hold on the real client and broker: the requests aiokafka builds carry it, and the
broker answers a held fetch at the first record (the worker's wiring: test_flows)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ledgerflow.testkit.plugin import KafkaServer, create_topics, unique_group, wait_until
from ledgerflow.workers.fetch_hold import hold_when_idle
from ledgerflow.workers.settings import Settings

pytestmark = pytest.mark.integration

# The workers' defaults: fetch_min_bytes, and the batch wait the broker holds a fetch for.
BATCHING = (
    Settings.model_fields["fetch_min_bytes"].default,
    Settings.model_fields["batch_wait_ms"].default,
)
IDLE_HOLD_MS = 5_000  # the longest the setting allows: an answer well before it is the byte's


async def test_an_idle_consumer_waits_at_the_broker_and_gets_its_first_record_at_once(
    kafka: KafkaServer, kafka_topic_prefix: str
) -> None:
    topic = f"{kafka_topic_prefix}idle-fetch"
    await create_topics(kafka.bootstrap_servers, [topic], partitions=3)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=unique_group("idle-fetch"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_min_bytes=BATCHING[0],
        fetch_max_wait_ms=BATCHING[1],
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await consumer.start()
    await producer.start()
    # Each request as aiokafka built it: (min bytes, max wait ms), and whether it got records.
    sent: list[tuple[int, int, bool | None]] = []
    fetcher = consumer._fetcher
    fetch = fetcher._proc_fetch_request

    async def recorded(assignment: Any, node_id: int, request: Any) -> bool:
        sent.append((request._min_bytes, request._max_wait_ms, None))
        at = len(sent) - 1
        got = bool(await fetch(assignment, node_id, request))
        sent[at] = (*sent[at][:2], got)
        return got

    fetcher._proc_fetch_request = recorded
    changes: list[bool] = []
    assert hold_when_idle(consumer, IDLE_HOLD_MS, changes.append) is not None
    received: list[bytes] = []

    async def consume() -> None:  # as FastStream's batch subscriber does
        while True:
            for records in (await consumer.getmany(timeout_ms=10, max_records=500)).values():
                received.extend(r.value for r in records if r.value is not None)

    loop = asyncio.create_task(consume())
    try:
        await wait_until(lambda: changes == [True], timeout_s=20, message="the consumer idle")
        await producer.send_and_wait(topic, b"first", key=b"k")
        await wait_until(
            lambda: received == [b"first"],
            timeout_s=IDLE_HOLD_MS / 1000 / 2,
            message="the first record, answered before the hold ran out",
        )
        assert changes == [True, False]
        # Batching, then one fetch held at the broker until the record landed (polling, there
        # would have been one every 10 ms).
        first = next(i for i, entry in enumerate(sent) if entry[2])
        assert [e[:2] for e in sent[: first + 1]] == [BATCHING] * first + [(1, IDLE_HOLD_MS)]
        # Batching again: the next fetches are built with the consumer's own settings.
        await wait_until(lambda: len(sent) > first + 2, timeout_s=10, message="fetches after")
        assert {e[:2] for e in sent[first + 1 :]} == {BATCHING}
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await producer.stop()
        await consumer.stop()
