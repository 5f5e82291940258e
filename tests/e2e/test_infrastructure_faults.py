"""Kafka and PostgreSQL restarted under load, and PostgreSQL unreachable for 30 seconds."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
from e2e_harness import assert_ok, http_get, scenario

from ledgerflow.contracts.topics import FLOWS

if TYPE_CHECKING:
    from pathlib import Path

    from ledgerflow.testkit.faults import FaultStack

pytestmark = pytest.mark.e2e

KAFKA_DOWN_S = 3.0
POSTGRES_DOWN_S = 2.0
OUTAGE_S = 30.0
READYZ_BOUND_S = 3.0  # the readiness check gives up after 2 s


async def test_kafka_restart_under_load(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """The broker crashes (SIGKILL) under load and comes back: workers, relay, producers and
    the consumer groups reconnect; nothing is lost or doubled."""
    async with scenario("kafka-restart", fault_stack, fault_template, tmp_path, seed) as s:
        s.start_load()
        await s.load_for(3)
        await fault_stack.stop_kafka(crash=True)
        down_at = time.monotonic()
        await s.load_for(KAFKA_DOWN_S)  # publishers keep trying meanwhile
        await fault_stack.start_kafka()
        s.report.notes["kafka_down_s"] = round(time.monotonic() - down_at, 1)
        await s.recovery("kafka_restart")
        await s.load_for(2)
        report = await s.finish()
        for process in (*s.pipeline.workers, s.pipeline.relay):
            assert process.process.poll() is None, process.log_tail()
    assert_ok(report)


async def test_postgres_restart_under_load(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """PostgreSQL stops in immediate mode (no checkpoint, sessions cut) under load, and starts
    again after crash recovery: in-flight batches fail and are retried, none is lost."""
    async with scenario("postgres-restart", fault_stack, fault_template, tmp_path, seed) as s:
        s.start_load()
        await s.load_for(3)
        await fault_stack.stop_postgres()
        down_at = time.monotonic()
        await s.load_for(POSTGRES_DOWN_S)
        await fault_stack.start_postgres()
        s.report.notes["postgres_down_s"] = round(time.monotonic() - down_at, 1)
        await s.recovery("postgres_restart")
        await s.load_for(2)
        report = await s.finish()
        for process in (*s.pipeline.workers, s.pipeline.relay):
            assert process.process.poll() is None, process.log_tail()
    assert_ok(report)


async def test_postgres_unreachable_for_30_s(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """PostgreSQL answers nothing for 30 s (frozen: connections hang, as in a partition). The
    workers stay up and report not ready, commit no offsets, dead-letter nothing, and catch up
    afterwards."""
    async with scenario("postgres-unreachable", fault_stack, fault_template, tmp_path, seed) as s:
        worker = s.pipeline.worker
        s.start_load()
        await s.load_for(2)
        fault_stack.pause_postgres()
        paused_at = time.monotonic()
        try:
            # A batch may have committed its transaction just before the freeze: give its
            # offset commit a moment, then the committed offsets must stand still.
            await s.load_for(3)
            before = {flow.name: await s.observer.committed(flow) for flow in FLOWS}
            ready = await asyncio.to_thread(http_get, worker, "/readyz")
            alive = await asyncio.to_thread(http_get, worker, "/healthz")
            await s.load_for(OUTAGE_S - (time.monotonic() - paused_at) - 3)
            ready_late = await asyncio.to_thread(http_get, worker, "/readyz")
            after = {flow.name: await s.observer.committed(flow) for flow in FLOWS}
            lag = await s.observer.lag()
        finally:
            fault_stack.resume_postgres()
        s.report.notes["outage_s"] = round(time.monotonic() - paused_at, 1)
        s.report.notes["lag_at_heal"] = sum(lag.values())
        s.recovery("postgres_unreachable")
        await s.load_for(2)
        report = await s.finish()
        assert worker.process.poll() is None, worker.log_tail()
    s.report.notes["readyz"] = f"{ready[0]}/{ready_late[0]} in {ready[2]:.1f}s"
    assert_ok(report)
    assert ready[0] == ready_late[0] == 503, (ready, ready_late)
    assert alive[0] == 200, alive
    assert ready[2] < READYZ_BOUND_S
    assert alive[2] < 1
    assert before == after, "offsets were committed while PostgreSQL was unreachable"
    assert sum(lag.values()) > 0, "no command waited during the outage"
    assert report.dead_lettered == 0
