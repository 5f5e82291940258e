"""Holds (DESIGN.md §5.1) on a real PostgreSQL, through the batched apply path: every path of
the two-phase cash-out asserted on the ledger rows and the result events, and the races of
settle, return and expiry on one hold."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import orjson
import pytest

from ledgerflow.ledger_db.apply import LedgerWriter, Outcome, OutcomeKind
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.testkit.commands import (
    apply_all,
    cashin,
    cashout,
    held_cashout,
    onboarding,
    returned,
    settle,
    transfer,
    wallet_of,
)
from ledgerflow.testkit.plugin import assert_audit_passes

pytestmark = pytest.mark.integration

RACE_ROUNDS = 12


async def funded(writer: LedgerWriter, amount: int = 10_000) -> tuple[uuid.UUID, uuid.UUID]:
    a, b = onboarding(), onboarding()
    await apply_all(writer, a, b)
    await apply_all(writer, cashin(wallet_of(a), amount))
    return wallet_of(a), wallet_of(b)


async def wallet_row(pool: asyncpg.Pool, wallet: uuid.UUID) -> dict[str, int]:
    row = await pool.fetchrow(
        "SELECT balance, held, out_day_total, out_month_total FROM balances "
        "WHERE account_id = $1 AND shard = 0",
        wallet,
    )
    assert row is not None
    return dict(row)


async def event(pool: asyncpg.Pool, outcome: Outcome) -> dict[str, Any]:
    payload = await pool.fetchval(
        "SELECT payload FROM outbox WHERE event_id = $1", uuid.UUID(outcome.event_id)
    )
    assert payload is not None, outcome
    return dict(orjson.loads(payload))


async def entries_of(pool: asyncpg.Pool, cashout_id: uuid.UUID) -> list[str]:
    rows = await pool.fetch(
        "SELECT flow FROM journal_entries WHERE idempotency_key = $1 ORDER BY flow", cashout_id
    )
    return [r["flow"] for r in rows]


async def test_a_held_cash_out_settles_into_one_entry(writer: LedgerWriter, pool: Any) -> None:
    wallet, _ = await funded(writer)
    approve = held_cashout(wallet, 3_000, fee=50)
    [held] = await apply_all(writer, approve)
    assert held.topic == "cashout.held"
    data = (await event(pool, held))["data"]
    assert data["available_after"] == 10_000 - 3_050
    assert dt.datetime.fromisoformat(data["hold_expires_at"]) > dt.datetime.now(dt.UTC)
    assert await wallet_row(pool, wallet) == {
        "balance": 10_000,
        "held": 3_050,
        "out_day_total": 3_050,
        "out_month_total": 3_050,
    }
    assert await entries_of(pool, approve.cashout_id) == []
    [done] = await apply_all(writer, settle(approve))
    assert done.topic == "cashout.completed"
    completed = (await event(pool, done))["data"]
    assert (completed["amount"], completed["fee"], completed["balance_after"]) == (
        3_000,
        50,
        6_950,
    )
    # Counted once toward the totals, when it was held.
    assert await wallet_row(pool, wallet) == {
        "balance": 6_950,
        "held": 0,
        "out_day_total": 3_050,
        "out_month_total": 3_050,
    }
    assert await entries_of(pool, approve.cashout_id) == ["cashout_settle"]
    await assert_audit_passes(pool)


async def test_a_returned_hold_is_voided_without_an_entry(writer: LedgerWriter, pool: Any) -> None:
    wallet, _ = await funded(writer)
    approve = held_cashout(wallet, 2_000, fee=20)
    await apply_all(writer, approve)
    [voided] = await apply_all(writer, returned(approve))
    assert voided.topic == "cashout.voided"
    data = (await event(pool, voided))["data"]
    assert (data["reason"], data["available_after"]) == ("returned", 10_000)
    # The void gave the day's and the month's totals back: the limits may be spent again.
    assert await wallet_row(pool, wallet) == {
        "balance": 10_000,
        "held": 0,
        "out_day_total": 0,
        "out_month_total": 0,
    }
    assert await entries_of(pool, approve.cashout_id) == []
    # Settling it now is too late; settling the wrong wallet's hold finds nothing.
    [late] = await apply_all(writer, settle(approve))
    assert (late.kind, late.reason) == (OutcomeKind.REJECTED, "already_voided")
    assert (await event(pool, late))["data"]["answers"] == "cashout.settled"
    await assert_audit_passes(pool)


async def test_an_immediate_cash_out_returned_is_reversed(writer: LedgerWriter, pool: Any) -> None:
    wallet, _ = await funded(writer)
    paid = cashout(wallet, 1_000, fee=10)
    await apply_all(writer, paid)
    assert (await wallet_row(pool, wallet))["balance"] == 8_990
    # A v1 cash-out cannot be settled: it was paid at once.
    [settled] = await apply_all(writer, settle(paid))
    assert settled.reason == "already_settled"
    [back] = await apply_all(writer, returned(paid))
    assert back.topic == "cashout.reversed"
    data = (await event(pool, back))["data"]
    assert (data["amount"], data["fee"], data["balance_after"]) == (1_000, 10, 10_000)
    assert await entries_of(pool, paid.cashout_id) == ["cashout", "cashout_return"]
    # The bank sends it back twice (another message): the first answer stands.
    [again] = await apply_all(writer, returned(paid, return_code="MD07"))
    assert (again.kind, again.reason) == (OutcomeKind.CONFLICT, "id_conflict")
    [replayed] = await apply_all(writer, returned(paid))
    assert (replayed.kind, replayed.event_id) == (OutcomeKind.REPLAYED, back.event_id)
    assert (await wallet_row(pool, wallet))["balance"] == 10_000
    await assert_audit_passes(pool)


async def test_a_settled_hold_returned_later_is_reversed(writer: LedgerWriter, pool: Any) -> None:
    wallet, _ = await funded(writer)
    approve = held_cashout(wallet, 500)
    await apply_all(writer, approve)
    await apply_all(writer, settle(approve))
    [back] = await apply_all(writer, returned(approve))
    assert back.topic == "cashout.reversed"
    assert (await wallet_row(pool, wallet))["balance"] == 10_000
    assert await entries_of(pool, approve.cashout_id) == ["cashout_return", "cashout_settle"]
    await assert_audit_passes(pool)


async def test_settling_an_unknown_hold_is_answered_but_not_recorded(
    writer: LedgerWriter, pool: Any
) -> None:
    wallet, _ = await funded(writer)
    approve = held_cashout(wallet, 700)
    # The payout service's answer overtook the approval (another topic): not found, yet.
    [early] = await apply_all(writer, settle(approve))
    assert (early.kind, early.reason) == (OutcomeKind.REJECTED, "hold_not_found")
    await apply_all(writer, approve)
    [done] = await apply_all(writer, settle(approve))
    assert done.topic == "cashout.completed"
    # The same settle again: its first answer, byte for byte; other content: id_conflict.
    [replay] = await apply_all(writer, settle(approve))
    assert (replay.kind, replay.event_id) == (OutcomeKind.REPLAYED, done.event_id)
    [conflict] = await apply_all(writer, settle(approve, bank_reference="OTHER"))
    assert conflict.reason == "id_conflict"
    assert await entries_of(pool, approve.cashout_id) == ["cashout_settle"]
    await assert_audit_passes(pool)


async def test_held_money_cannot_be_spent(writer: LedgerWriter, pool: Any) -> None:
    wallet, other = await funded(writer, 1_000)
    await apply_all(writer, held_cashout(wallet, 800))
    [spend] = await apply_all(writer, transfer(wallet, other, 300))
    assert spend.reason == "insufficient_funds"
    [more] = await apply_all(writer, held_cashout(wallet, 300))
    assert more.reason == "insufficient_funds"
    [fits] = await apply_all(writer, transfer(wallet, other, 200))
    assert fits.kind == OutcomeKind.COMPLETED
    assert await wallet_row(pool, wallet) == {
        "balance": 800,
        "held": 800,
        "out_day_total": 1_000,
        "out_month_total": 1_000,
    }


async def test_a_void_gives_the_daily_limit_back(pool: Any) -> None:
    limits = {"basic": TierLimits(daily_out_max=1_000)}
    writer = LedgerWriter(pool, limits)
    wallet, other = await funded(writer, 5_000)
    approve = held_cashout(wallet, 900)
    await apply_all(writer, approve)
    [over] = await apply_all(writer, transfer(wallet, other, 200))
    assert over.reason == "limit_exceeded"
    await apply_all(writer, returned(approve))
    [now_fits] = await apply_all(writer, transfer(wallet, other, 1_000))
    assert now_fits.kind == OutcomeKind.COMPLETED


def pinned(writer: LedgerWriter, at: dt.datetime) -> LedgerWriter:
    return LedgerWriter(writer.pool, writer.limits, clock=lambda: at)


async def test_an_expired_hold_is_voided_once_and_cannot_be_settled(
    writer: LedgerWriter, pool: Any
) -> None:
    wallet, _ = await funded(writer)
    approve = held_cashout(wallet, 1_200, fee=5, expires_in_s=60)
    await apply_all(writer, approve)
    later = pinned(writer, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61))
    # Past its time but not swept yet: too late to settle.
    [late] = await apply_all(later, settle(approve))
    assert late.reason == "hold_expired"
    [voided] = await later.expire_holds()
    assert voided.topic == "cashout.voided"
    data = (await event(pool, voided))["data"]
    assert (data["reason"], data["available_after"]) == ("expired", 10_000)
    envelope = await event(pool, voided)
    assert envelope["causationid"]  # it answers the approving command
    assert await later.expire_holds() == []
    [gone] = await apply_all(later, returned(approve))
    assert gone.reason == "hold_expired"
    assert (await wallet_row(pool, wallet))["held"] == 0
    await assert_audit_passes(pool)


async def test_settle_and_return_racing_on_one_hold_have_one_winner(pool: Any) -> None:
    one, two = (
        LedgerWriter(pool, {"basic": TierLimits()}),
        LedgerWriter(pool, {"basic": TierLimits()}),
    )
    wallet, _ = await funded(one, 100 * RACE_ROUNDS)
    for _ in range(RACE_ROUNDS):
        approve = held_cashout(wallet, 50)
        await apply_all(one, approve)
        [a], [b] = await asyncio.gather(
            apply_all(one, settle(approve)), apply_all(two, returned(approve))
        )
        # The hold resolves once: voided by the return, or posted by the settle (a return after
        # it reverses the settlement: that is the settle winning, not a second resolution).
        won = {a.topic, b.topic} - {"cashout.rejected", "cashout.reversed"}
        assert len(won) == 1, (a, b)
        # The loser was told why: a settle after the void, or the return reversed the settle.
        if won == {"cashout.voided"}:
            assert a.reason == "already_voided"
        else:
            assert b.topic == "cashout.reversed"
    assert (await wallet_row(pool, wallet))["held"] == 0
    await assert_audit_passes(pool)


async def test_settle_racing_expiry_and_two_sweepers_resolve_each_hold_once(pool: Any) -> None:
    writer = LedgerWriter(pool, {"basic": TierLimits()})
    wallet, _ = await funded(writer, 100 * RACE_ROUNDS)
    approvals = [held_cashout(wallet, 10, expires_in_s=60) for _ in range(RACE_ROUNDS)]
    await apply_all(writer, *approvals)
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    sweepers = [pinned(writer, at), pinned(writer, at)]
    results = await asyncio.gather(
        sweepers[0].expire_holds(),
        sweepers[1].expire_holds(),
        *(apply_all(pinned(writer, at), settle(x)) for x in approvals[:4]),
    )
    expired = [o for batch in results[:2] for o in batch]
    settles = [o for batch in results[2:] for o in batch]
    assert len(expired) == RACE_ROUNDS  # once each, whichever sweeper got it
    assert len({o.key for o in expired}) == RACE_ROUNDS
    assert all(o.reason == "hold_expired" for o in settles)
    row = await wallet_row(pool, wallet)
    assert (row["balance"], row["held"]) == (100 * RACE_ROUNDS, 0)
    await assert_audit_passes(pool)
