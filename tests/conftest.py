"""Shared test setup lives in the `testkit.plugin` pytest plugin (registered by entry point);
this file holds only what the suite's own tests share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ledgerflow.workers import tracing

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, every span kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()
