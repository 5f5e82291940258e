"""A command's trace, unbroken from its traceparent to its result event's, through the outbox.

The worker and the relay run in this process (real Kafka, real PostgreSQL) with an in-memory span
exporter, so every span they make can be inspected.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import SecretStr

from ledgerflow.contracts.topics import ONBOARDING
from ledgerflow.harness.results import ResultCollector, event_id_of, publish
from ledgerflow.testkit.commands import onboarding
from ledgerflow.testkit.plugin import wait_until
from ledgerflow.workers.app import build_worker_app
from ledgerflow.workers.auth import AuthMode
from ledgerflow.workers.relay import Relay
from ledgerflow.workers.settings import Settings
from ledgerflow.workers.topics import ensure_topics, topic_specs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.integration

PARTITIONS = 2
TIMEOUT_S = 30.0


def parse(traceparent: str) -> tuple[int, int]:
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


@pytest.fixture
async def in_process(
    database: Any, kafka: Any, kafka_topic_prefix: str, exporter: Any
) -> AsyncIterator[tuple[str, AIOKafkaProducer, ResultCollector]]:
    """A worker (onboarding) and a relay in this process, a producer and a result collector."""
    prefix = kafka_topic_prefix
    bootstrap = kafka.bootstrap_servers
    await ensure_topics(
        bootstrap, topic_specs(prefix, PARTITIONS, PARTITIONS, 1), replication_factor=1
    )
    settings = Settings(
        auth_mode=AuthMode.OFF,
        database_url=SecretStr(database.app_url),
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        lag_interval_ms=60_000,
    )
    app = build_worker_app(settings, ["onboarding"])
    relay = Relay(database.app_url, bootstrap, 100)
    stop = asyncio.Event()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    results = ResultCollector(bootstrap, prefix)
    await app.start()
    relay_task = asyncio.create_task(relay.run(stop))
    await producer.start()
    await results.start()
    try:
        yield prefix, producer, results
    finally:
        await results.stop()
        await producer.stop()
        stop.set()
        await relay_task
        await app.stop()


async def test_result_event_continues_the_commands_trace_through_the_outbox(
    in_process: tuple[str, AIOKafkaProducer, ResultCollector], exporter: Any, database: Any
) -> None:
    prefix, producer, results = in_process
    api = TracerProvider().get_tracer("api-layer")  # the upstream API layer, not exported here
    propagator = TraceContextTextMapPropagator()
    sent: list[tuple[str, int, int]] = []  # command id, api trace id, api span id
    commands = [onboarding() for _ in range(3)]
    for command in commands:
        with api.start_as_current_span("POST /wallets", kind=SpanKind.PRODUCER) as span:
            carrier: dict[str, str] = {}
            propagator.inject(carrier)
            rec = await publish(
                producer, command, ONBOARDING, prefix, traceparent=carrier["traceparent"]
            )
            context = span.get_span_context()
            sent.append((event_id_of(rec), context.trace_id, context.span_id))
    untraced = await publish(producer, onboarding(), ONBOARDING, prefix)

    for command_id, api_trace_id, api_span_id in sent:
        [event] = await results.wait_for(command_id, timeout_s=TIMEOUT_S)
        assert event["type"] == "onboarding.completed"
        result_trace_id, publish_span_id = parse(event["_headers"]["traceparent"].decode())
        assert result_trace_id == api_trace_id, "the result event is in the command's trace"

        def by_id(span_id: int, trace_id: int = api_trace_id) -> ReadableSpan | None:
            for span in exporter.get_finished_spans():
                if span.context.trace_id == trace_id and span.context.span_id == span_id:
                    return span
            return None

        # relay: the result event's traceparent names the relay's publish span...
        await wait_until(
            lambda sid=publish_span_id: by_id(sid) is not None,
            timeout_s=TIMEOUT_S,
            message="the relay's publish span is exported",
        )
        relay_span = by_id(publish_span_id)
        assert relay_span is not None
        assert relay_span.kind is SpanKind.PRODUCER
        assert relay_span.name == f"{prefix}onboarding.completed publish"
        assert relay_span.attributes is not None
        assert relay_span.attributes["messaging.message.id"] == event["id"]
        # ... whose parent is the context the outbox row stored: the worker's span of this
        # command ...
        assert relay_span.parent is not None
        conn = await asyncpg.connect(database.app_url)
        try:
            stored = await conn.fetchval(
                "SELECT traceparent FROM outbox WHERE event_id = $1::uuid", event["id"]
            )
        finally:
            await conn.close()
        assert parse(stored) == (api_trace_id, relay_span.parent.span_id)
        worker_span = by_id(relay_span.parent.span_id)
        assert worker_span is not None
        assert worker_span.name == f"{prefix}onboarding.requested process"
        assert worker_span.kind is SpanKind.CONSUMER
        assert worker_span.attributes is not None
        assert worker_span.attributes["messaging.message.id"] == command_id
        assert worker_span.attributes["ledgerflow.outcome"] == "completed"
        assert worker_span.attributes["ledgerflow.result_event_id"] == event["id"]
        # ... whose parent is the API layer's span: the command's traceparent.
        assert worker_span.parent is not None
        assert worker_span.parent.span_id == api_span_id

        # The worker's span links its batch span; the batch links the command's context and
        # holds the PostgreSQL transaction span.
        [batch_link] = worker_span.links
        batch_context = batch_link.context
        batch = by_id(batch_context.span_id, batch_context.trace_id)
        assert batch is not None
        assert batch.name == "onboarding batch"
        assert (api_trace_id, api_span_id) in {
            (link.context.trace_id, link.context.span_id) for link in batch.links
        }
        transactions = [
            span
            for span in exporter.get_finished_spans()
            if span.name == "ledger transaction"
            and span.parent is not None
            and span.parent.span_id == batch.context.span_id
        ]
        assert len(transactions) == 1
        assert transactions[0].attributes is not None
        assert transactions[0].attributes["db.system.name"] == "postgresql"

    # A command without a traceparent starts a trace in the worker; its result continues it.
    [event] = await results.wait_for(event_id_of(untraced), timeout_s=TIMEOUT_S)
    trace_id, span_id = parse(event["_headers"]["traceparent"].decode())
    assert trace_id not in {api_trace for _, api_trace, _ in sent}
    await wait_until(
        lambda: any(
            s.context.span_id == span_id and s.context.trace_id == trace_id
            for s in exporter.get_finished_spans()
        ),
        timeout_s=TIMEOUT_S,
        message="the untraced command's publish span is exported",
    )
    roots = [
        s
        for s in exporter.get_finished_spans()
        if s.context.trace_id == trace_id and s.kind is SpanKind.CONSUMER
    ]
    assert len(roots) == 1
    assert roots[0].parent is None
