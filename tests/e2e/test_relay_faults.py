"""The outbox relay crashed between publishing and marking, and an active relay killed under load
while a standby waits."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from e2e_harness import assert_ok, scenario

from ledgerflow.testkit.faults import kill9, kill_relay_between_publish_and_mark
from ledgerflow.testkit.plugin import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from ledgerflow.testkit.faults import FaultStack

pytestmark = pytest.mark.e2e

RELAY_KILLS = 3
TAKEOVER_BOUND_S = 10.0  # the standby retries the lock every second


async def test_kill9_relay_between_publish_and_mark(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """kill -9 the relay after Kafka acknowledged events it has not marked published: its
    successor publishes them again, with the same CloudEvents ids; nothing is lost."""
    async with scenario("kill9-relay", fault_stack, fault_template, tmp_path, seed) as s:
        s.start_load()
        relay = s.pipeline.relay
        resend_due = 0
        for _ in range(RELAY_KILLS):
            await s.load_for(s.rng.uniform(0.5, 1.5))
            _, unmarked = await kill_relay_between_publish_and_mark(
                relay, s.observer, s.pipeline.results, s.rng
            )
            killed_at = time.monotonic()
            resend_due += unmarked
            relay = await s.start("relay")
            await s.recovery("kill9_relay", killed_at)
        s.report.notes["resend_due"] = resend_due
        report = await s.finish()
    assert_ok(report)
    assert resend_due > 0, "no kill landed between publish and mark"
    # Each event that was delivered but not marked was delivered again (same id).
    assert report.dup_delivered >= resend_due


async def test_two_relays_kill_the_active_one(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """Two relays, one active under the advisory lock: kill -9 the active one under load; the
    standby takes the lock and carries on in order. Twice."""
    async with scenario("kill9-active-relay", fault_stack, fault_template, tmp_path, seed) as s:
        active = s.pipeline.relay
        standby = await s.start("relay")
        s.start_load()
        takeovers = []
        for _ in range(2):
            holder = await s.observer.relay_lock_holder()
            assert holder is not None, "no relay holds the lock"
            await s.load_for(s.rng.uniform(1.0, 2.0))
            kill9(active)
            killed_at = time.monotonic()

            async def taken(before: int = holder) -> bool:
                now = await s.observer.relay_lock_holder()
                return now is not None and now != before

            await wait_until(taken, timeout_s=TAKEOVER_BOUND_S, message="standby took the lock")
            takeovers.append(round(time.monotonic() - killed_at, 2))
            await s.recovery("kill9_active_relay", killed_at)
            active, standby = standby, await s.start("relay")
        s.report.notes["lock_takeover_s"] = takeovers
        report = await s.finish()
    assert_ok(report)
