"""Fault-injection tests: real worker and relay processes on a PostgreSQL and Kafka of their own.

The shared embedded stack (ports 55432/59092) serves every other test session on this machine, so
these tests never touch it: one `FaultStack` (own folder, free ports) is started per session and
the scenarios crash, restart and freeze that one. Each scenario prints a one-line report; the
lines are repeated in pytest's terminal summary. Each scenario draws a seed (printed in its report);
LEDGERFLOW_E2E_SEED=<seed> replays the workload and fault schedule of that report.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from e2e_harness import REPORT_LINES

from ledgerflow.testkit.faults import FaultStack
from ledgerflow.testkit.plugin import build_template

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SEED_ENV = "LEDGERFLOW_E2E_SEED"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fault_stack() -> AsyncIterator[FaultStack]:
    faults = await FaultStack.start()
    try:
        yield faults
    finally:
        await faults.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fault_template(fault_stack: FaultStack) -> str:
    return await build_template(fault_stack.postgres)


@pytest.fixture
def seed() -> int:
    """LEDGERFLOW_E2E_SEED, or a fresh one; printed in the scenario's report either way."""
    return int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1, 10**6))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT_LINES:
        terminalreporter.section("fault-injection reports")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)
