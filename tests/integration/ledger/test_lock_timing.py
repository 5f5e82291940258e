"""A batch reports how long it waited for its row locks and how long it held them (the
`ledgerflow_batch_lock_wait_seconds` and `ledgerflow_batch_locked_seconds` histograms)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from ledger_helpers import wallet_held

from ledgerflow.ledger_db.apply import Incoming, LedgerWriter, LockTiming, OutcomeKind
from ledgerflow.ledger_db.queries import get_account
from ledgerflow.testkit.commands import apply_all, cashin, onboarding, parsed, transfer, wallet_of
from ledgerflow.testkit.plugin import wait_until

pytestmark = pytest.mark.integration

HELD_S = 0.3  # how long the other transaction keeps the wallet after the batch waits on it


async def test_a_batch_behind_another_transactions_lock_reports_the_wait(
    writer: LedgerWriter, pool: asyncpg.Pool, database: Any
) -> None:
    a, b = onboarding(), onboarding()
    await apply_all(writer, a, b, cashin(wallet_of(a), 1_000))
    sender, receiver = wallet_of(a), wallet_of(b)

    alone = LockTiming()
    outcomes = await writer.apply([Incoming(parsed(transfer(sender, receiver, 10)))], timing=alone)
    assert [o.kind for o in outcomes] == [OutcomeKind.COMPLETED]
    assert alone.locked_at is not None
    assert 0 < alone.lock_wait_s < HELD_S
    assert 0 < alone.locked_s < HELD_S

    async with wallet_held(database, receiver) as held:
        behind = LockTiming()
        batch = [Incoming(parsed(transfer(sender, receiver, 20)))]
        applied = asyncio.ensure_future(writer.apply(batch, timing=behind))
        await wait_until(held.waiting, timeout_s=10, message="the batch waits for the wallet")
        blocked_at = time.perf_counter()
        await asyncio.sleep(HELD_S)  # the wait being measured, not a synchronisation
        released_at = time.perf_counter()
        await held.release()
        outcomes = await applied
    assert [o.kind for o in outcomes] == [OutcomeKind.COMPLETED]
    assert behind.lock_wait_s >= released_at - blocked_at
    # Held from the locks to the commit: the batch's own work, not the other's hold.
    assert 0 < behind.locked_s < behind.lock_wait_s
    async with pool.acquire() as conn:
        view = await get_account(conn, receiver)
    assert view is not None
    assert view.balance == 30
