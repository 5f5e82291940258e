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
    totals = await pool.fetchrow(OUTGOING, w)
    assert tuple(totals) == (600, 600)


OUTGOING = "SELECT out_day_total, out_month_total FROM balances WHERE account_id = $1"


async def test_outgoing_totals_restart_with_a_new_day_and_a_new_month(pool: asyncpg.Pool) -> None:
    limits = {"basic:*": TierLimits(daily_out_max=1_000, monthly_out_max=1_500)}
    writer = LedgerWriter(pool, limits)
    person = onboarding()
    w = wallet_of(person)
    await apply_all(writer, person, cashin(w, 5_000))

    async def out(amount: int) -> str | None:
        [outcome] = await apply_all(writer, cashout(w, amount))
        return outcome.reason

    assert await out(600) is None
    assert await out(600) == RejectReason.LIMIT_EXCEEDED.value  # 1,200 today
    # The totals were written on another day of this month (the 1st has no earlier day).
    await pool.execute(
        "UPDATE balances SET out_day = CASE WHEN extract(day FROM out_day) = 1"
        " THEN out_day + 1 ELSE out_day - 1 END WHERE account_id = $1",
        w,
    )
    assert await out(600) is None  # today restarts at 0
    assert tuple(await pool.fetchrow(OUTGOING, w)) == (600, 1_200)
    assert await out(400) == RejectReason.LIMIT_EXCEEDED.value  # 1,600 this month
    # ... and in an earlier month.
    await pool.execute(
        "UPDATE balances SET out_month = (out_month - interval '1 month')::date,"
        " out_day = (out_month - interval '1 month')::date WHERE account_id = $1",
        w,
    )
    assert await out(400) is None
    assert tuple(await pool.fetchrow(OUTGOING, w)) == (400, 400)


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
