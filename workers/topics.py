"""Create every topic of the contract with explicit partitions (auto-creation is off)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ledgerflow.contracts.topics import FLOWS

if TYPE_CHECKING:
    from collections.abc import Mapping

ADMIN_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int


def topic_specs(
    prefix: str, command_partitions: int, result_partitions: int, dlq_partitions: int
) -> list[TopicSpec]:
    specs: dict[str, TopicSpec] = {}
    for flow in FLOWS:  # a result topic shared by several flows is created once
        for name, partitions in (
            (flow.command_topic, command_partitions),
            *((result, result_partitions) for result in flow.result_topics),
            (flow.dlq_topic, dlq_partitions),
        ):
            specs.setdefault(name, TopicSpec(prefix + name, partitions))
    return list(specs.values())


async def ensure_topics(
    bootstrap_servers: str,
    specs: list[TopicSpec],
    replication_factor: int,
    security: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the missing topics; return the names created (empty when all existed).

    `security`: workers.kafka_security.kafka_client_options(settings) of a principal allowed to
    create topics (services are not).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=ADMIN_TIMEOUT_MS,
        **(security or {}),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(s.name, s.partitions, replication_factor) for s in missing],
                timeout_ms=ADMIN_TIMEOUT_MS,
            )
        return [s.name for s in missing]
    finally:
        await admin.close()
