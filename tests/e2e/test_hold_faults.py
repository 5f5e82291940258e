"""kill -9 of the cash-out worker while it expires holds, and while it settles them: every hold
is resolved exactly once — one void or one settle entry, one answer (a redelivered command
replays the same CloudEvents id) — nothing doubled, nothing lost, and the audit passes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from ledgerflow.contracts.topics import CASHOUT, CASHOUT_SETTLE
from ledgerflow.testkit.commands import held_cashout, settle
from ledgerflow.testkit.pipeline import Pipeline, fund_wallets, publish, running_pipeline
from ledgerflow.testkit.plugin import assert_audit_passes, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from ledgerflow.contracts.commands import ApproveCashOut

pytestmark = pytest.mark.e2e

WALLETS, HOLDS_PER_WALLET = 8, 25
TIMEOUT_S = 90.0


async def count(p: Pipeline, where: str) -> int:
    conn = await asyncpg.connect(p.database.owner_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM holds WHERE {where}"))
    finally:
        await conn.close()


async def place_holds(p: Pipeline, expires_in_s: int | None) -> list[ApproveCashOut]:
    wallets = await fund_wallets(p, WALLETS, 1_000_000)
    holds = [
        held_cashout(w, 10 + i, expires_in_s=expires_in_s)
        for w in wallets
        for i in range(HOLDS_PER_WALLET)
    ]
    for hold in holds:
        await publish(p.producer, hold, CASHOUT, p.prefix)
    for hold in holds:
        await p.results.wait_for_key(str(hold.cashout_id), TIMEOUT_S)
    return holds


async def kill_when(p: Pipeline, where: str, total: int) -> int:
    """SIGKILL the worker as soon as some but not all holds are `where`; returns how many."""
    done = 0

    async def midway() -> bool:
        nonlocal done
        done = await count(p, where)
        return 0 < done < total

    try:
        await wait_until(midway, timeout_s=TIMEOUT_S, interval_s=0.01, message=f"holds {where}")
    except TimeoutError as exc:  # say which way it missed: nothing applied, or all at once
        raise TimeoutError(f"{exc}: {done} of {total} when last counted") from None
    p.worker.process.kill()
    await asyncio.to_thread(p.worker.process.wait, 10)
    return done


def one_answer_each(p: Pipeline, holds: list[ApproveCashOut], kind: str) -> None:
    for hold in holds:
        events = p.results.by_command_key[str(hold.cashout_id)]
        answers = {e["id"] for e in events if e["type"] == kind}
        assert len(answers) == 1, (hold.cashout_id, [e["type"] for e in events])


async def audited(p: Pipeline) -> None:
    conn = await asyncpg.connect(p.database.owner_url)
    try:
        assert await conn.fetchval("SELECT coalesce(sum(held), 0) FROM balances") == 0
    finally:
        await conn.close()
    await assert_audit_passes(p.database.owner_url)


async def test_kill9_worker_while_it_expires_holds(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Path
) -> None:
    async with running_pipeline(
        postgres,
        kafka,
        ledgerflow_db_template,
        tmp_path,
        hold_expires_s="2",
        hold_expiry_interval_s="0.05",
        hold_expiry_round_max="3",  # many small rounds: the kill lands inside the sweep
    ) as p:
        holds = await place_holds(p, expires_in_s=None)
        total = len(holds)
        voided_at_kill = await kill_when(p, "status = 'voided'", total)
        await asyncio.to_thread(p.start, "worker", "all")

        async def all_voided() -> bool:
            return await count(p, "status = 'voided' AND void_reason = 'expired'") == total

        await wait_until(all_voided, timeout_s=TIMEOUT_S, message="every hold expired")
        for hold in holds:
            await p.results.wait_for_key(str(hold.cashout_id), TIMEOUT_S, count=2)
        one_answer_each(p, holds, "cashout.voided")
        assert await count(p, "status <> 'voided'") == 0
        await audited(p)
    assert 0 < voided_at_kill < total


async def test_kill9_worker_while_it_settles_holds(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Path
) -> None:
    async with running_pipeline(
        postgres,
        kafka,
        ledgerflow_db_template,
        tmp_path,
        # Small batches: the settles land in many transactions, so the kill finds some but
        # not all applied. A fetch that gathers all 200 would settle them in one step.
        batch_records_max="5",
    ) as p:
        holds = await place_holds(p, expires_in_s=3_600)
        total = len(holds)
        # Watched from the first publish: a worker that keeps pace with the publishing has
        # settled them all by the last one, so a watch begun after it finds nothing midway.
        killing = asyncio.create_task(kill_when(p, "status = 'settled'", total))
        for hold in holds:
            await publish(p.producer, settle(hold), CASHOUT_SETTLE, p.prefix)
        settled_at_kill = await killing
        await asyncio.to_thread(p.start, "worker", "all")
        for hold in holds:
            await p.results.wait_for_key(str(hold.cashout_id), TIMEOUT_S, count=2)
        assert await count(p, "status = 'settled'") == total
        one_answer_each(p, holds, "cashout.completed")
        conn = await asyncpg.connect(p.database.owner_url)
        try:
            entries = await conn.fetchval(
                "SELECT count(*) FROM journal_entries WHERE flow = 'cashout_settle'"
            )
        finally:
            await conn.close()
        assert entries == total  # one entry per hold, none twice
        await audited(p)
    assert 0 < settled_at_kill < total
