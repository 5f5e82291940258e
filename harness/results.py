"""Result events off Kafka, indexed by command: for the demo, the benchmarks and the test kit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ledgerflow.contracts.codec import KafkaRecord, encode_command
from ledgerflow.contracts.topics import FLOWS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiokafka import AIOKafkaProducer
    from pydantic import BaseModel

    from ledgerflow.contracts.topics import Flow

ASSIGNMENT_TIMEOUT_S = 30.0
ID_FIELDS = tuple(dict.fromkeys(flow.id_field for flow in FLOWS))


async def topic_partitions(
    bootstrap: str, topics: list[str], security: dict[str, Any]
) -> list[TopicPartition]:
    """Every partition of the topics that exist (no consumer group needed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in t["partitions"]
    ]


@dataclass(slots=True)
class ResultCollector:
    """Reads every result topic from the start and indexes events by the command's id."""

    bootstrap_servers: str
    topic_prefix: str = ""
    flows: Sequence[Flow] = FLOWS
    security: dict[str, Any] = field(default_factory=dict)  # kafka_client_options(settings)
    events: list[dict[str, Any]] = field(default_factory=list)
    by_causation: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    # By idempotency key (transfer_id, …): a replay carries the first command's causationid.
    by_command_key: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, *, from_end: bool = False) -> None:
        """Read from the beginning, or (from_end) only what is published after this returns.

        Partitions are assigned by hand, without a consumer group: no heartbeats, so a test
        that blocks its event loop for a while cannot lose the collector's place.
        """
        topics = [
            self.topic_prefix + t
            for t in dict.fromkeys(t for f in self.flows for t in f.result_topics)
        ]
        partitions = await topic_partitions(self.bootstrap_servers, topics, self.security)
        if len({tp.topic for tp in partitions}) < len(topics):
            raise RuntimeError(f"result topics missing: {topics}")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False, **self.security
        )
        await self._consumer.start()
        self._consumer.assign(partitions)
        if from_end:
            await self._consumer.seek_to_end(*partitions)
        else:
            await self._consumer.seek_to_beginning(*partitions)
        for tp in partitions:  # pin positions before any command is published
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    event = orjson.loads(record.value)
                    event["_key"] = record.key
                    event["_value"] = record.value  # the bytes as published
                    event["_partition"] = record.partition
                    event["_headers"] = dict(record.headers)
                    event["_received"] = time.monotonic()
                    self.events.append(event)
                    self.by_causation[str(event.get("causationid"))].append(event)
                    data = event.get("data") or {}
                    for id_field in ID_FIELDS:
                        if id_field in data:
                            self.by_command_key[str(data[id_field])].append(event)
            self._arrived.set()

    async def wait_for(
        self, causation_id: str, timeout_s: float = 30.0, count: int = 1
    ) -> list[dict[str, Any]]:
        """The result events of one command (by its CloudEvents id), once `count` arrived."""
        return await self._wait(self.by_causation, causation_id, count, timeout_s)

    async def wait_for_key(
        self, key: str, timeout_s: float = 30.0, count: int = 1
    ) -> list[dict[str, Any]]:
        """The result events that answer an idempotency key, replays included."""
        return await self._wait(self.by_command_key, key, count, timeout_s)

    async def _wait(
        self, index: dict[str, list[dict[str, Any]]], key: str, count: int, timeout_s: float
    ) -> list[dict[str, Any]]:
        async def until() -> None:
            while len(index.get(key, ())) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(until(), timeout_s)
        return index[key]

    async def wait_total(self, count: int, timeout_s: float = 60.0) -> None:
        async def until() -> None:
            while len(self.events) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(until(), timeout_s)


async def publish(
    producer: AIOKafkaProducer,
    command: BaseModel,
    flow: Flow,
    topic_prefix: str = "",
    **kwargs: Any,
) -> KafkaRecord:
    """Publish one command as an upstream API layer would; returns what was sent."""
    rec = encode_command(flow, command, topic_prefix=topic_prefix, **kwargs)
    await producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=list(rec.headers))
    return rec


def event_id_of(rec: KafkaRecord) -> str:
    return str(orjson.loads(rec.value)["id"])
