"""`ledgerflow dlq`: what was dead-lettered and why, and sending it back once fixed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from ledgerflow.contracts.topics import FLOWS
from ledgerflow.harness.results import topic_partitions
from ledgerflow.workers.kafka_io import idempotent_producer
from ledgerflow.workers.kafka_security import kafka_client_options
from ledgerflow.workers.records import header
from ledgerflow.workers.settings import Settings

console = Console()
dlq_app = typer.Typer(no_args_is_help=True, help="Dead-letter topics.")
SHOWN_MAX = 1_000
VALUE_PREVIEW_CHARS = 80


@dataclass(frozen=True, slots=True)
class Letter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    def header(self, name: str) -> str:
        return header(self.headers, name) or ""

    def as_json(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "error": self.header("x-error"),
            "error_class": self.header("x-error-class"),
            "original_topic": self.header("x-original-topic"),
            "original_partition": self.header("x-original-partition"),
            "original_offset": self.header("x-original-offset"),
        }


async def read_dead_letters(
    bootstrap: str, topics: list[str], limit: int, security: dict[str, Any] | None = None
) -> list[Letter]:
    """Every message currently in the topics (up to `limit`), without joining a group."""
    security = security or {}
    partitions = await topic_partitions(bootstrap, topics, security)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **security)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        letters: list[Letter] = []
        while len(letters) < limit and await _behind(consumer, ends):
            batch = await consumer.getmany(timeout_ms=1_000, max_records=limit - len(letters))
            letters.extend(
                Letter(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers))
                for records in batch.values()
                for r in records
            )
        return letters[:limit]
    finally:
        await consumer.stop()


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


def _topics(settings: Settings, flow: str | None) -> list[str]:
    return [settings.topic_prefix + f.dlq_topic for f in FLOWS if flow in (None, f.name)]


@dlq_app.command("show")
def show(
    flow: Annotated[
        str | None, typer.Option(help="onboarding, cashin, transfer or cashout")
    ] = None,
    limit: int = typer.Option(100, min=1, max=SHOWN_MAX),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List dead letters with their error and origin."""
    settings = Settings()
    letters = asyncio.run(
        read_dead_letters(
            settings.kafka_bootstrap_servers,
            _topics(settings, flow),
            limit,
            kafka_client_options(settings),
        )
    )
    if as_json:
        print(json.dumps([x.as_json() for x in letters]))
        return
    table = Table("topic", "offset", "error class", "error", "from")
    for x in letters:
        table.add_row(
            x.topic,
            f"{x.partition}/{x.offset}",
            x.header("x-error-class"),
            x.header("x-error")[:VALUE_PREVIEW_CHARS],
            f"{x.header('x-original-topic')}@{x.header('x-original-offset')}",
        )
    console.print(table)
    console.print(f"{len(letters)} dead letter(s)")


@dlq_app.command("replay")
def replay(
    flow: Annotated[str, typer.Option(help="onboarding, cashin, transfer or cashout")],
    limit: int = typer.Option(100, min=1, max=SHOWN_MAX),
) -> None:
    """Send dead letters back to their original topic, unchanged (after the cause is fixed).

    Safe to repeat: a replayed command that was already applied is answered as a duplicate.
    """
    settings = Settings()

    async def run() -> int:
        security = kafka_client_options(settings)
        letters = await read_dead_letters(
            settings.kafka_bootstrap_servers, _topics(settings, flow), limit, security
        )
        producer = idempotent_producer(settings.kafka_bootstrap_servers, "ledgerflow-dlq", security)
        await producer.start()
        try:
            for x in letters:
                headers = [(k, v) for k, v in x.headers if not k.startswith("x-")]
                await producer.send_and_wait(
                    x.header("x-original-topic"), x.value, key=x.key, headers=headers
                )
        finally:
            await producer.stop()
        return len(letters)

    console.print(f"replayed {asyncio.run(run())} dead letter(s) to their original topic")
