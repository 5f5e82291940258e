"""Limits hold under concurrency: checked under the wallet's row lock, not before it, and on the
wallet's own day, which never goes back (a batch whose clock reads before midnight cannot reset
the new day's total)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from ledger_helpers import wallet_held

from ledgerflow.contracts.events import RejectReason
from ledgerflow.ledger_db.apply import Incoming, LedgerWriter, OutcomeKind
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.testkit.commands import apply_all, cashin, cashout, onboarding, parsed, wallet_of
from ledgerflow.testkit.plugin import wait_until

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Mapping

from ledgerflow.testkit.plugin import assert_audit_passes

pytestmark = pytest.mark.integration

DAILY = {"basic:*": TierLimits(daily_out_max=1_000)}
LIMIT = RejectReason.LIMIT_EXCEEDED.value
# Pinned clocks, far from the real date: the days they give can only come from the clock.
BEFORE_MIDNIGHT = "2027-03-14T23:59:59.900+00:00"
AFTER_MIDNIGHT = "2027-03-15T00:00:00.100+00:00"
BEFORE_MONTH_END = "2027-03-31T23:59:59.900+00:00"
AFTER_MONTH_END = "2027-04-01T00:00:00.100+00:00"


def at(moment: str) -> Callable[[], dt.datetime]:
    pinned = dt.datetime.fromisoformat(moment)
    return lambda: pinned


def writer_at(pool: asyncpg.Pool, limits: Mapping[str, TierLimits], moment: str) -> LedgerWriter:
    return LedgerWriter(pool, limits, clock=at(moment))


async def out(writer: LedgerWriter, wallet: uuid.UUID, amount: int) -> str | None:
    """A cash-out's reject reason; None when it completed."""
    [outcome] = await apply_all(writer, cashout(wallet, amount))
    return outcome.reason


async def funded_wallet(pool: asyncpg.Pool, amount: int = 5_000) -> uuid.UUID:
    person = onboarding()
    await apply_all(LedgerWriter(pool, DAILY), person, cashin(wallet_of(person), amount))
    return wallet_of(person)


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
DAYS = "SELECT out_day::text, out_month::text FROM balances WHERE account_id = $1"


async def test_outgoing_totals_restart_with_a_new_day_and_a_new_month(
    pool: asyncpg.Pool, database: Any
) -> None:
    limits = {"basic:*": TierLimits(daily_out_max=1_000, monthly_out_max=1_500)}
    w = await funded_wallet(pool)

    def on(moment: str) -> LedgerWriter:
        return writer_at(pool, limits, moment)

    assert await out(on("2027-03-02T10:00:00+00:00"), w, 600) is None
    assert await out(on("2027-03-02T11:00:00+00:00"), w, 600) == LIMIT  # 1,200 that day
    assert await out(on("2027-03-03T10:00:00+00:00"), w, 600) is None  # the next day restarts
    assert tuple(await pool.fetchrow(OUTGOING, w)) == (600, 1_200)
    assert await out(on("2027-03-04T10:00:00+00:00"), w, 400) == LIMIT  # 1,600 that month
    assert await out(on("2027-04-01T00:00:00+00:00"), w, 400) is None  # ... and the next month
    assert tuple(await pool.fetchrow(OUTGOING, w)) == (400, 400)
    assert tuple(await pool.fetchrow(DAYS, w)) == ("2027-04-01", "2027-04-01")
    await assert_audit_passes(database.admin_url)


async def test_a_batch_whose_clock_reads_before_midnight_cannot_reset_the_new_day(
    pool: asyncpg.Pool, database: Any
) -> None:
    """The midnight race, in the order that broke the limit: a batch whose clock reads before
    midnight commits after one that already rolled the wallet over. Its debit counts toward the
    wallet's day (the new one), whose total stands; before 0004 it wrote the old day back with a
    total of its own, and the new day's limit could be spent again."""
    w = await funded_wallet(pool)
    late = writer_at(pool, DAILY, BEFORE_MIDNIGHT)
    next_day = writer_at(pool, DAILY, AFTER_MIDNIGHT)
    assert await out(late, w, 600) is None  # 14 March: 600
    assert await out(next_day, w, 600) is None  # 15 March restarts: 600
    assert await out(late, w, 600) == LIMIT  # 15 March would be 1,200 (14 March is over)
    assert await out(late, w, 300) is None  # 15 March: 900
    assert await out(next_day, w, 100) is None  # 15 March: 1,000
    assert await out(next_day, w, 1) == LIMIT
    assert await out(late, w, 1) == LIMIT
    assert tuple(await pool.fetchrow(OUTGOING, w)) == (1_000, 1_600)
    assert tuple(await pool.fetchrow(DAYS, w)) == ("2027-03-15", "2027-03-01")
    # The late batch's entry records the day it counted toward, so the audit recounts exactly.
    days = await pool.fetch(
        "SELECT e.out_day::text AS day, -p.amount AS amount FROM journal_entries e"
        " JOIN postings p ON p.entry_id = e.id AND p.account_id = $1 AND p.amount < 0"
        " ORDER BY e.created_at, e.id",
        w,
    )
    assert [(r["day"], r["amount"]) for r in days] == [
        ("2027-03-14", 600),
        ("2027-03-15", 600),
        ("2027-03-15", 300),
        ("2027-03-15", 100),
    ]
    await assert_audit_passes(database.admin_url)


async def test_midnight_race_with_the_row_locked_across_the_boundary(
    pool: asyncpg.Pool, database: Any
) -> None:
    """Both clocks' batches wait for a transaction holding the wallet's row over midnight; then
    they run in whichever order PostgreSQL grants the lock. Either way the batch after midnight
    completes and the one before it, which sees the row as the other left it, is refused: the
    daily limit holds on both days."""
    w = await funded_wallet(pool)
    late = writer_at(pool, DAILY, BEFORE_MIDNIGHT)
    next_day = writer_at(pool, DAILY, AFTER_MIDNIGHT)
    assert await out(late, w, 600) is None  # 14 March: 600
    async with wallet_held(database, w) as held:
        first = asyncio.ensure_future(out(next_day, w, 600))
        await wait_until(lambda: _at_least(held.waiting, 1), timeout_s=10, message="one waits")
        second = asyncio.ensure_future(out(late, w, 600))
        await wait_until(lambda: _at_least(held.waiting, 2), timeout_s=10, message="both wait")
        await held.release()
        assert list(await asyncio.gather(first, second)) == [None, LIMIT]
    assert tuple(await pool.fetchrow(OUTGOING, w)) == (600, 1_200)
    assert tuple(await pool.fetchrow(DAYS, w)) == ("2027-03-15", "2027-03-01")
    await assert_audit_passes(database.admin_url)


async def _at_least(count: Callable[[], Any], n: int) -> bool:
    return bool(await count() >= n)


async def test_the_monthly_limit_holds_across_a_month_boundary_race(
    pool: asyncpg.Pool, database: Any
) -> None:
    limits = {"basic:*": TierLimits(daily_out_max=10_000, monthly_out_max=1_500)}
    w = await funded_wallet(pool)
    late = writer_at(pool, limits, BEFORE_MONTH_END)
    next_month = writer_at(pool, limits, AFTER_MONTH_END)
    assert await out(late, w, 900) is None  # March: 900
    assert await out(next_month, w, 900) is None  # April restarts: 900
    assert await out(late, w, 700) == LIMIT  # April would be 1,600 (March is over)
    assert await out(late, w, 100) is None  # April: 1,000
    assert await out(next_month, w, 500) is None  # April: 1,500
    assert await out(next_month, w, 1) == LIMIT
    assert await out(late, w, 1) == LIMIT
    assert tuple(await pool.fetchrow(OUTGOING, w)) == (1_500, 1_500)
    assert tuple(await pool.fetchrow(DAYS, w)) == ("2027-04-01", "2027-04-01")
    await assert_audit_passes(database.admin_url)


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
