"""Workers crashed (kill -9) mid-batch, frozen past their session timeout, and terminated."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
from e2e_harness import assert_ok, metric, scenario

from testkit.faults import kill_worker_at, probe_until, terminate, thaw
from workers.app import GRACEFUL_TIMEOUT_S, SESSION_TIMEOUT_MS

if TYPE_CHECKING:
    from pathlib import Path

    from testkit.faults import FaultStack

pytestmark = pytest.mark.e2e

KILLS = ("in_transaction", "after_db_commit") * 2
# A SIGTERMed worker drains its in-flight batch for at most GRACEFUL_TIMEOUT_S, then exits.
EXIT_BOUND_S = GRACEFUL_TIMEOUT_S + 5
FROZEN_MAX_S = SESSION_TIMEOUT_MS / 1000 + 30


async def test_kill9_worker_mid_batch(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """kill -9 the only worker inside a batch transaction and between its DB commit and its
    offset commit, repeatedly, under load; a new worker takes over each time."""
    async with scenario("kill9-worker", fault_stack, fault_template, tmp_path, seed) as s:
        s.start_load()
        worker = s.pipeline.worker
        moments = []
        redelivery_due = 0
        for wanted in KILLS:
            await s.load_for(s.rng.uniform(0.3, 1.5))
            kill = await kill_worker_at(worker, s.observer, s.workload, wanted, s.rng)
            killed_at = time.monotonic()
            moments.append(kill.moment)
            redelivery_due += kill.applied_not_committed
            worker = await s.start("worker", "all")
            # Recovered: every command sent before the kill answered (includes the restart).
            await s.recovery(f"kill9_{kill.moment}", killed_at)
        s.report.notes["kill_moments"] = ",".join(moments)
        s.report.notes["redelivery_due"] = redelivery_due
        report = await s.finish()
    assert_ok(report)
    assert "in_transaction" in moments
    assert "after_db_commit" in moments
    # Commands committed in PostgreSQL but not in Kafka were delivered again and replayed.
    assert report.redelivered >= redelivery_due > 0


async def test_sigstop_worker_past_session_timeout(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """Freeze one of two workers inside a batch transaction for longer than the session
    timeout: the group gives its partitions to the other worker, which must carry on. Then the
    zombie wakes up and finishes its batch: its late writes must change nothing."""
    async with scenario(
        "sigstop-worker", fault_stack, fault_template, tmp_path, seed, workers=2
    ) as s:
        zombie, survivor = s.pipeline.workers
        s.start_load()
        await s.load_for(2)

        async def in_transaction() -> bool:
            return await s.observer.open_worker_transactions() > 0

        await probe_until(zombie, in_transaction, s.rng)
        frozen_at = time.monotonic()
        # Taken over: every command sent so far is answered while the zombie is still frozen.
        takeover = s.recovery("sigstop_takeover", frozen_at)
        done, _ = await asyncio.wait([takeover], timeout=FROZEN_MAX_S)
        taken_over = bool(done)
        await s.load_for(max(0.0, SESSION_TIMEOUT_MS / 1000 + 2 - (time.monotonic() - frozen_at)))
        thaw(zombie)
        s.report.notes["frozen_s"] = round(time.monotonic() - frozen_at, 1)
        s.recovery("sigcont_rejoin")
        await s.load_for(3)
        report = await s.finish()
        commit_failures = metric(zombie, "ledgerflow_offset_commit_failures_total")
        s.report.notes["zombie_commit_failures"] = commit_failures
        assert survivor.process.poll() is None
    assert_ok(report)
    assert taken_over, "the second worker did not take over while the first was frozen"


async def test_sigterm_worker_during_load(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """SIGTERM the worker under load: it finishes or abandons its batch, commits the offsets of
    what it applied, and exits in time; its successor loses nothing and replays nothing."""
    async with scenario("sigterm-worker", fault_stack, fault_template, tmp_path, seed) as s:
        s.start_load()
        worker = s.pipeline.worker
        exits = []
        for _ in range(3):
            await s.load_for(s.rng.uniform(1.0, 3.0))
            code, took = await terminate(worker, EXIT_BOUND_S)
            exits.append(round(took, 1))
            assert code == 0, f"worker exited {code} after {took:.1f} s: {worker.log_tail()}"
            stopped_at = time.monotonic()
            assert await s.observer.applied_beyond_committed(s.workload) == 0
            worker = await s.start("worker", "all")
            s.recovery("sigterm_restart", stopped_at)
        s.report.notes["exit_s"] = exits
        report = await s.finish()
    assert_ok(report)
    assert report.redelivered == 0, "a clean shutdown left applied commands uncommitted"
