"""OpenTelemetry traces: a command's trace runs from the API layer to its result event.

```
API layer span ──traceparent──▶ "<command topic> process" span, one per command, child of the
                                command's context, linked to its batch span
                                    │ its context is stored in the outbox row (same transaction)
                                    ▼
                                "<result topic> publish" span in the relay, child of the stored
                                context ──traceparent──▶ the result event
```

A batch carries many traces, so it is one "<flow> batch" span that links the commands' contexts,
with the "ledger transaction" span (the PostgreSQL transaction) as its child; each command's
process span links back to its batch span (OpenTelemetry's messaging conventions for batches).

Off by default: without `LEDGERFLOW_OTLP_ENDPOINT` no span is made and a command's `traceparent`
goes to its result event unchanged. The spans are ours, from a FastStream middleware: not
FastStream's KafkaTelemetryMiddleware (for a batch it links only messages that carry a
`correlation_id` header, and on publish it overwrites `traceparent`) and not the aiokafka
instrumentor — one source of spans, no duplicates. The relay publishes with aiokafka directly and
sets the stored context itself.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

from faststream._internal.middlewares import BaseMiddleware
from faststream.message import AckStatus
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ledgerflow.workers.records import Record, header

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from ledgerflow.ledger_db.apply import Incoming, Outcome
    from ledgerflow.workers.settings import Settings

TRACEPARENT = "traceparent"
INSTRUMENTATION_NAME = "ledgerflow"
# The SDK keeps 128 links per span by default; a batch of 500 links its first 128 commands.
BATCH_LINKS_MAX = 128
OTLP_TIMEOUT_S = 10

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(slots=True)
class _State:
    tracer: Tracer | None = None
    provider: trace.TracerProvider | None = None


_STATE = _State()


@dataclass(slots=True)
class _BatchSpans:
    """The current batch's per-command spans, for the outbox rows and the outcomes."""

    by_record: dict[tuple[str, int, int], Span] = field(default_factory=dict)
    by_traceparent: dict[str, Span] = field(default_factory=dict)


_BATCH: contextvars.ContextVar[_BatchSpans | None] = contextvars.ContextVar(
    "ledgerflow_batch_spans", default=None
)


class _OutboxRow(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def event_id(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def traceparent(self) -> str | None: ...


# Setup.


def configure(settings: Settings, service_name: str) -> TracerProvider | None:
    """At process start: export spans over OTLP/HTTP when an endpoint is set; else stay off."""
    if not settings.otlp_endpoint:
        return None
    # Imported here: processes without tracing never load the SDK and the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

    try:
        version = metadata.version("ledgerflow")
    except metadata.PackageNotFoundError:
        version = "unknown"
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name, SERVICE_VERSION: version}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    endpoint = settings.otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(
                endpoint=endpoint,
                headers=parse_headers(settings.otlp_headers.get_secret_value()),
                timeout=OTLP_TIMEOUT_S,
            )
        )
    )
    trace.set_tracer_provider(provider)
    install(provider)
    return provider


def parse_headers(text: str) -> dict[str, str]:
    """`k=v,k2=v2` (the OTEL_EXPORTER_OTLP_HEADERS format) into a dict."""
    headers: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return headers


def install(provider: trace.TracerProvider | None) -> None:
    """Trace with `provider` from now on (None: off). Tests install an in-memory exporter's."""
    _STATE.provider = provider
    _STATE.tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION_NAME)


def flush(timeout_s: float = OTLP_TIMEOUT_S) -> None:
    """Export the spans still queued, at an app's shutdown: uvicorn ends the process with the
    signal it caught right after serving, so code after `run()` may never run."""
    provider = _STATE.provider
    if provider is not None and hasattr(provider, "force_flush"):
        provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush spans still queued for export (at process exit)."""
    provider, _STATE.provider, _STATE.tracer = _STATE.provider, None, None
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()


def enabled() -> bool:
    return _STATE.tracer is not None


# Context helpers.


def context_of(traceparent: str | None) -> Context:
    """The context a W3C traceparent names; an empty one (a new trace) when absent or invalid."""
    if not traceparent:
        return Context()
    return _PROPAGATOR.extract({TRACEPARENT: traceparent})


def traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a traceparent (for log lines), or None."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


# The worker: one middleware per broker, three hooks for the batch processor.


class _TracingMiddleware(BaseMiddleware[Any, Any]):
    def __init__(
        self, msg: Any, /, *, context: ContextRepo, flow_of_topic: Mapping[str, str]
    ) -> None:
        super().__init__(msg, context=context)
        self._flow_of_topic = flow_of_topic

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        tracer = _STATE.tracer
        if tracer is None:
            return await call_next(msg)
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        topic = records[0].topic if records else ""
        flow = self._flow_of_topic.get(topic, topic)
        parents = [context_of(header(record.headers, TRACEPARENT)) for record in records]
        links = [
            Link(span_context)
            for span_context in (
                trace.get_current_span(parent).get_span_context() for parent in parents
            )
            if span_context.is_valid
        ][:BATCH_LINKS_MAX]
        batch_span = tracer.start_span(
            f"{flow} batch",
            context=Context(),
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": topic,
                "messaging.batch.message_count": len(records),
                "ledgerflow.flow": flow,
            },
        )
        to_batch = [Link(batch_span.get_span_context())]
        spans = _BatchSpans()
        for record, parent in zip(records, parents, strict=True):
            span = tracer.start_span(
                f"{record.topic} process",
                context=parent,
                kind=SpanKind.CONSUMER,
                links=to_batch,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": record.topic,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset,
                    "ledgerflow.flow": flow,
                },
            )
            spans.by_record[(record.topic, record.partition, record.offset)] = span
            value = traceparent_of(span)
            if value is not None:
                spans.by_traceparent[value] = span
        batch_token = _BATCH.set(spans)
        context_token = otel_context.attach(trace.set_span_in_context(batch_span))
        every = [batch_span, *spans.by_record.values()]
        try:
            result = await call_next(msg)
        except BaseException as error:
            for span in every:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            batch_span.record_exception(error)
            raise
        else:
            if msg.committed is AckStatus.NACKED:
                for span in every:
                    span.set_status(Status(StatusCode.ERROR, "batch failed; redelivered"))
            return result
        finally:
            otel_context.detach(context_token)
            _BATCH.reset(batch_token)
            for span in every:
                span.end()


def middleware(flow_of_topic: Mapping[str, str]) -> Any:
    """The worker's tracing middleware; `flow_of_topic`: command topic (prefixed) to flow."""
    topics = dict(flow_of_topic)

    def build(msg: Any, /, *, context: ContextRepo) -> _TracingMiddleware:
        return _TracingMiddleware(msg, context=context, flow_of_topic=topics)

    return build


def outbox_traceparent(record: Record) -> str | None:
    """The context a command's result event continues: its process span's when tracing, else
    the command's own `traceparent`, unchanged."""
    spans = _BATCH.get()
    if spans is not None:
        span = spans.by_record.get((record.topic, record.partition, record.offset))
        if span is not None:
            return traceparent_of(span)
    return header(record.headers, TRACEPARENT)


@contextmanager
def ledger_transaction(flow: str, commands: int) -> Iterator[None]:
    """The batch's PostgreSQL transaction (retries included), a child of the batch span."""
    tracer = _STATE.tracer
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(
        "ledger transaction",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system.name": "postgresql",
            "db.operation.name": "apply batch",
            "ledgerflow.flow": flow,
            "ledgerflow.batch.commands": commands,
        },
    ):
        yield


def annotate_outcomes(incoming: Sequence[Incoming], outcomes: Sequence[Outcome]) -> None:
    """Ids and outcome on each command's span (never its content)."""
    spans = _BATCH.get()
    if spans is None:
        return
    for item, outcome in zip(incoming, outcomes, strict=False):
        span = spans.by_traceparent.get(item.traceparent or "")
        if span is None:
            continue
        span.set_attributes(
            {
                "messaging.message.id": item.command.meta.event_id or "",
                "ledgerflow.outcome": outcome.kind.value,
                "ledgerflow.reason": outcome.reason or "",
                "ledgerflow.result_event_id": outcome.event_id,
            }
        )


# The relay.


@contextmanager
def publish_spans(rows: Sequence[_OutboxRow]) -> Iterator[list[str | None]]:
    """One producer span per outbox row, child of the context the row stored; yields the
    traceparent each result event carries (the stored one, unchanged, when not tracing). The
    spans end when the block does: after the sends were acknowledged."""
    tracer = _STATE.tracer
    if tracer is None:
        yield [row.traceparent for row in rows]
        return
    spans = [
        tracer.start_span(
            f"{row.topic} publish",
            context=context_of(row.traceparent),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": row.topic,
                "messaging.message.id": row.event_id,
                "ledgerflow.outbox.id": row.id,
            },
        )
        for row in rows
    ]
    try:
        yield [traceparent_of(span) for span in spans]
    except BaseException as error:
        for span in spans:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        raise
    finally:
        for span in spans:
            span.end()
