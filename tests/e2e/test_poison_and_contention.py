"""A poison message, a storm of A→B / B→A transfers, and a double-spend race."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from e2e_harness import assert_ok, metric, scenario

from ledgerflow.contracts.topics import CASHOUT, TRANSFER
from ledgerflow.testkit.commands import cashout, transfer
from ledgerflow.workers.app import POISON_ATTEMPTS_MAX

if TYPE_CHECKING:
    from pathlib import Path

    from ledgerflow.testkit.faults import FaultStack

pytestmark = pytest.mark.e2e

MARKER = "E2E-POISON-9c41"
POISONS = 3
STORM_TRANSFERS = 400
SPEND_BALANCE = 10_000
SPEND_AMOUNT = 1_000
SPEND_ATTEMPTS = 45  # 10 can succeed


def off_contract_key() -> bytes:
    """A Kafka key that is not the sender's id (an upstream bug): lands in any partition."""
    return uuid.uuid4().hex.encode()


async def test_poison_message_is_dead_lettered_and_the_partition_moves_on(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """Transfers that fail every time in the worker (a handler bug, simulated) are retried a
    bounded number of times with backoff, dead-lettered with the error, and the commands
    behind them in their partition are processed."""
    async with scenario(
        "poison", fault_stack, fault_template, tmp_path, seed, fault_poison_marker=MARKER
    ) as s:
        s.start_load()
        for _ in range(POISONS):
            await s.load_for(s.rng.uniform(1.0, 2.0))
            await s.workload.publish_poison()
            s.recovery("poison")
        await s.load_for(2)
        failures = 0.0

        async def count_failures() -> None:
            nonlocal failures
            failures = metric(
                s.pipeline.worker, "ledgerflow_batch_failures_total", error_class="InjectedFault"
            )
            s.report.notes["failed_attempts"] = failures

        report = await s.finish(count_failures)
    assert_ok(report)
    assert report.dead_lettered == POISONS
    assert 0 < failures <= POISON_ATTEMPTS_MAX * POISONS


async def test_transfer_storm_and_double_spend_race(
    fault_stack: FaultStack, fault_template: str, tmp_path: Path, seed: int
) -> None:
    """Two workers. A storm of A→B and B→A transfers, and many debits of one wallet at once
    (transfers and cash-outs, some keyed off-contract so they spread over partitions): no
    negative balance, exactly as many debits succeed as the balance covers, deadlocks are
    retried and never surface."""
    async with scenario(
        "storm-double-spend", fault_stack, fault_template, tmp_path, seed, workers=2
    ) as s:
        w = s.workload
        a, b = w.wallets[0], w.wallets[1]
        await w.open_wallets(1, funding=SPEND_BALANCE)
        spender = w.wallets[-1]
        receivers = w.wallets[2:12]
        started = time.monotonic()
        debits: list[str] = []
        storm = [
            transfer(a, b, s.rng.randint(1, 1_000))
            if i % 2
            else transfer(b, a, s.rng.randint(1, 1_000))
            for i in range(STORM_TRANSFERS)
        ]
        for i, command in enumerate(storm):
            # Half keyed off-contract: A's and B's transfers then sit in every partition, so both
            # workers lock A and B at the same time, from both sides.
            await w.publish(TRANSFER, command, record_key=off_contract_key() if i % 4 < 2 else None)
            if i % (STORM_TRANSFERS // SPEND_ATTEMPTS) == 0 and len(debits) < SPEND_ATTEMPTS:
                if len(debits) % 3 == 2:
                    debit = cashout(spender, SPEND_AMOUNT)
                    await w.publish(CASHOUT, debit)
                    debits.append(str(debit.cashout_id))
                else:
                    spend = transfer(spender, s.rng.choice(receivers), SPEND_AMOUNT)
                    # Off-contract keys spread one wallet's debits over every partition.
                    key = off_contract_key() if len(debits) % 3 == 1 else None
                    await w.publish(TRANSFER, spend, record_key=key)
                    debits.append(str(spend.transfer_id))
        await w.flush()
        s.recovery("storm", started)
        failures = 0.0

        async def count_retries() -> None:
            nonlocal failures
            workers = s.pipeline.workers
            failures = sum(metric(p, "ledgerflow_batch_failures_total") for p in workers)
            for cause in ("deadlock", "lock_timeout", "serialization", "unique_violation"):
                retried = sum(
                    metric(p, "ledgerflow_db_retries_total", cause=cause) for p in workers
                )
                s.report.notes[f"retried_{cause}"] = retried
            s.report.notes["failed_batches"] = failures
            s.report.notes["transfers_by_worker"] = [
                metric(p, "ledgerflow_commands_total", flow="transfer") for p in workers
            ]

        report = await s.finish(count_retries)
        outcomes = Counter(
            (
                w.results.by_command_key[k][0]["type"],
                w.results.by_command_key[k][0]["data"].get("reason"),
            )
            for k in debits
        )
        storm_reasons = Counter(
            w.results.by_command_key[str(c.transfer_id)][0]["data"].get("reason") for c in storm
        )
        balance = await s.observer.value(
            "SELECT balance FROM balances WHERE account_id = $1", spender
        )
    assert_ok(report)
    succeeded = sum(n for (kind, _), n in outcomes.items() if kind.endswith(".completed"))
    assert succeeded == SPEND_BALANCE // SPEND_AMOUNT, outcomes
    assert all(
        reason == "insufficient_funds"
        for (kind, reason), n in outcomes.items()
        if kind.endswith(".rejected")
    ), outcomes
    assert balance == 0
    assert set(storm_reasons) <= {None, "insufficient_funds"}, storm_reasons
    assert failures == 0, "a deadlock or lock timeout surfaced as a failed batch"
    assert all(s.report.notes["transfers_by_worker"]), "one worker did all the transfers"
