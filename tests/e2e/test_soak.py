"""The soak behind `ledgerflow chaos`, short: combined faults drawn from the whole menu every few
seconds, then every delivery check. Keeps the soak itself working between long runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from e2e_harness import REPORT_LINES, assert_ok

from ledgerflow.testkit.chaos import soak

if TYPE_CHECKING:
    from ledgerflow.testkit.faults import FaultStack

pytestmark = pytest.mark.e2e

MINUTES = 0.75
INTERVAL_S = 4.0  # the CLI's minimum is 2 s
ROUNDS_MIN = 2  # a Kafka restart or a PostgreSQL freeze heals in up to ~25 s


async def test_short_soak_with_combined_faults(fault_stack: FaultStack, seed: int) -> None:
    said: list[str] = []
    report = await soak(fault_stack, MINUTES, seed, interval_s=INTERVAL_S, say=said.append)
    line = report.line()
    print(line)
    REPORT_LINES.append(line)
    assert_ok(report)
    rounds = [s for s in said if s.endswith("...")]
    assert len(rounds) >= ROUNDS_MIN, said
    assert sum(report.faults.values()) >= len(rounds)
    assert report.lost == 0
    assert report.dup_applied == 0
    assert report.outcomes["completed"] > 0
    # Every round's recovery was measured: the backlog each fault left was answered.
    assert report.recovery_s
