"""Workers crashed (kill -9) mid-batch, frozen past their session timeout, and terminated."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

import pytest
from e2e_harness import assert_ok, metric, scenario

from ledgerflow.testkit.faults import kill_worker_at, local_ports, probe_until, terminate, thaw
from ledgerflow.testkit.plugin import wait_until
from ledgerflow.workers.app import GRACEFUL_TIMEOUT_S, SESSION_TIMEOUT_MS

if TYPE_CHECKING:
    from pathlib import Path

    from ledgerflow.testkit.faults import FaultStack

pytestmark = pytest.mark.e2e

KILLS = ("in_transaction", "after_db_commit")
# A SIGTERMed worker drains its in-flight batch for at most GRACEFUL_TIMEOUT_S, then exits.
EXIT_BOUND_S = GRACEFUL_TIMEOUT_S + 5
CLEAN_EXIT = (0, -signal.SIGTERM)
FROZEN_MAX_S = SESSION_TIMEOUT_MS / 1000 + 30
PAST_SESSION_TIMEOUT_S = SESSION_TIMEOUT_MS / 1000 + 2


async def test_kill9_worker_mid_batch(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """kill -9 the only worker inside a batch transaction and between its DB commit and its
    offset commit, repeatedly, under load; a new worker takes over each time."""
    async with scenario("kill9-worker", fault_stack, fault_template, tmp_path, seed) as s:
        s.start_load()
        worker = s.pipeline.worker
        kills = []
        for wanted in KILLS:
            await s.load_for(s.rng.uniform(0.3, 1.5))
            kill = await kill_worker_at(worker, s.observer, s.workload, wanted, s.rng)
            killed_at = time.monotonic()
            kills.append(kill)
            worker = await s.start("worker", "all")
            # Recovered: every command sent before the kill answered (includes the restart).
            await s.recovery(f"kill9_{kill.moment}", killed_at)
        redelivery_due = sum(k.applied_not_committed for k in kills)
        s.report.notes["kill_moments"] = ",".join(k.moment for k in kills)
        s.report.notes["redelivery_due"] = redelivery_due
        report = await s.finish()
    assert_ok(report)
    assert any(k.in_transaction for k in kills), "no kill inside a batch transaction"
    assert redelivery_due > 0, "no kill between a DB commit and its offset commit"
    # Commands committed in PostgreSQL but not in Kafka were delivered again and replayed.
    assert report.redelivered >= redelivery_due


async def test_sigstop_worker_past_session_timeout(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """Freeze one of two workers for longer than the session timeout, first inside a batch
    transaction (holding wallet row locks), then at a random moment (maybe holding a fetched
    batch): the group gives its partitions to the other worker, which must carry on while the
    zombie sleeps. Then the zombie wakes up and finishes what it was doing: its late writes must
    change nothing."""
    async with scenario(
        "sigstop-worker", fault_stack, fault_template, tmp_path, seed, workers=2
    ) as s:
        zombie, survivor = s.pipeline.workers
        s.start_load()
        taken_over = []
        for moment in ("in_transaction", "random"):
            await s.load_for(s.rng.uniform(1.0, 2.0))

            async def found(moment: str = moment) -> bool:
                if moment == "random":
                    return True
                ports = local_ports(zombie.process.pid)
                return await s.observer.open_worker_transactions(ports) > 0

            await probe_until(zombie, found, s.rng)
            frozen_at = time.monotonic()
            # Taken over: everything sent until a second after the freeze (about half of it into
            # the zombie's partitions) is answered while the zombie is still frozen.
            await s.load_for(1)
            takeover = s.recovery(f"sigstop_takeover_{moment}", frozen_at)
            done, _ = await asyncio.wait([takeover], timeout=FROZEN_MAX_S)
            taken_over.append(bool(done))
            await s.load_for(max(0.0, PAST_SESSION_TIMEOUT_S - (time.monotonic() - frozen_at)))
            thaw(zombie)
            s.report.notes[f"frozen_s_{moment}"] = round(time.monotonic() - frozen_at, 1)
            thawed_at = time.monotonic()
            await wait_until(
                lambda: zombie.get("/readyz")[0] == 200,
                timeout_s=FROZEN_MAX_S,
                message="the zombie rejoined the group",
            )
            s.report.recovered("sigcont_rejoin", time.monotonic() - thawed_at)
        s.report.notes["zombie_commit_failures"] = metric(
            zombie, "ledgerflow_offset_commit_failures_total"
        )
        report = await s.finish()
        assert survivor.process.poll() is None
    assert_ok(report)
    assert all(taken_over), "the second worker did not take over while the first was frozen"


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
            # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean exit too.
            assert code in CLEAN_EXIT, f"worker exited {code} after {took:.1f} s"
            stopped_at = time.monotonic()
            assert await s.observer.applied_beyond_committed(s.workload) == 0
            worker = await s.start("worker", "all")
            s.recovery("sigterm_restart", stopped_at)
        s.report.notes["exit_s"] = exits
        report = await s.finish()
    assert_ok(report)
    assert report.redelivered == 0, "a clean shutdown left applied commands uncommitted"
