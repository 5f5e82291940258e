"""Limits hold under concurrency: checked under the wallet's row lock, not before it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from contracts.events import RejectReason
from ledger_db.apply import Incoming, LedgerWriter, OutcomeKind
from ledger_db.rules import TierLimits
from testkit.commands import apply_all, cashin, cashout, onboarding, parsed, wallet_of

if TYPE_CHECKING:
    import asyncpg

pytestmark = pytest.mark.integration

DAILY = {"basic:*": TierLimits(daily_out_max=1_000)}


async def test_two_concurrent_cash_outs_cannot_jointly_pass_the_daily_limit(
    pool: asyncpg.Pool,
) -> None:
    person = onboarding()
    w = wallet_of(person)
    await apply_all(LedgerWriter(pool, DAILY), person, cashin(w, 5_000))
    writers = [LedgerWriter(pool, DAILY) for _ in range(2)]
    first, second = cashout(w, 600), cashout(w, 600)
    results = await asyncio.gather(
        writers[0].apply([Incoming(parsed(first))]), writers[1].apply([Incoming(parsed(second))])
    )
    kinds = sorted((o.kind, o.reason) for [o] in results)
    assert kinds == [
        (OutcomeKind.COMPLETED, None),
        (OutcomeKind.REJECTED, RejectReason.LIMIT_EXCEEDED.value),
    ]
    assert await pool.fetchval("SELECT balance FROM balances WHERE account_id = $1", w) == 4_400
    assert await pool.fetchval("SELECT total FROM wallet_outgoing WHERE account_id = $1", w) == 600


async def test_set_tier_raises_the_limit(pool: asyncpg.Pool, database: object) -> None:
    limits = {"basic:*": TierLimits(single_amount_max=100), "standard:*": TierLimits()}
    person = onboarding()
    w = wallet_of(person)
    writer = LedgerWriter(pool, limits)
    await apply_all(writer, person)
    [refused] = await apply_all(writer, cashin(w, 500))
    assert refused.reason == RejectReason.LIMIT_EXCEEDED.value
    await pool.execute("UPDATE customers SET tier = 'standard' WHERE id = $1", person.customer_id)
    [accepted] = await apply_all(writer, cashin(w, 500))
    assert accepted.kind is OutcomeKind.COMPLETED
