"""Trace context helpers: off passes traceparent through; on, the relay continues the stored one."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ledgerflow.workers import tracing

STORED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class Row:
    id: int
    event_id: str
    topic: str
    traceparent: str | None


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    headers: list[tuple[str, bytes]]


def test_off_by_default_and_the_traceparent_passes_through_unchanged() -> None:
    assert not tracing.enabled()
    rows = [Row(1, "e1", "transfer.completed", STORED), Row(2, "e2", "transfer.completed", None)]
    with tracing.publish_spans(rows) as values:
        assert values == [STORED, None]
    record = Rec("transfer.initiated", 0, 7, [("TraceParent", STORED.encode())])
    assert tracing.outbox_traceparent(record) == STORED
    assert tracing.outbox_traceparent(Rec("t", 0, 1, [])) is None


def test_relay_spans_are_children_of_the_stored_context(exporter: InMemorySpanExporter) -> None:
    rows = [Row(1, "e1", "transfer.completed", STORED), Row(2, "e2", "transfer.rejected", None)]
    with tracing.publish_spans(rows) as values:
        assert all(values)
    first, second = exporter.get_finished_spans()
    assert first.kind is SpanKind.PRODUCER
    assert first.parent is not None
    assert first.parent.span_id == int("b7ad6b7169203331", 16)
    assert first.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert values[0] == f"00-{first.context.trace_id:032x}-{first.context.span_id:016x}-01"
    assert second.parent is None, "no stored context: a new trace"
    assert first.attributes is not None
    assert first.attributes["messaging.message.id"] == "e1"


def test_a_failed_publish_marks_its_spans(exporter: InMemorySpanExporter) -> None:
    rows = [Row(1, "e1", "t", STORED)]
    with pytest.raises(ConnectionError), tracing.publish_spans(rows):
        raise ConnectionError
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


def test_invalid_traceparents_start_a_new_trace(exporter: InMemorySpanExporter) -> None:
    for bad in ("garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "ff-x-y-z"):
        with tracing.publish_spans([Row(1, "e", "t", bad)]):
            pass
    assert all(span.parent is None for span in exporter.get_finished_spans())


def test_helpers() -> None:
    assert tracing.trace_id_of(STORED) == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.trace_id_of(None) is None
    assert tracing.trace_id_of("nonsense") is None
    assert tracing.parse_headers("authorization=Bearer x, x-tenant = a,broken") == {
        "authorization": "Bearer x",
        "x-tenant": "a",
    }
