"""Merchants (DESIGN.md §5.2) on a real PostgreSQL: payments split with the merchant's fee in
force, partial and full refunds giving the fee back in proportion, refunds racing on one
payment, and the answers each refusal gets."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import orjson
import pytest

from ledgerflow.ledger_db.apply import LedgerWriter, Outcome, OutcomeKind
from ledgerflow.ledger_db.rules import AccountKind, FeeSchedule, TierLimits, house_account_id
from ledgerflow.testkit.commands import (
    apply_all,
    cashin,
    merchant,
    onboarding,
    payment,
    refund,
    wallet_of,
)
from ledgerflow.testkit.plugin import assert_audit_passes

pytestmark = pytest.mark.integration

FEE_REVENUE = house_account_id(AccountKind.FEE_REVENUE, "EUR")
RACERS = 20


async def shop(writer: LedgerWriter, funds: int = 100_000) -> tuple[uuid.UUID, uuid.UUID]:
    payer, seller = onboarding(), merchant()
    await apply_all(writer, payer, seller)
    await apply_all(writer, cashin(wallet_of(payer), funds))
    return wallet_of(payer), wallet_of(seller)


async def balance(pool: asyncpg.Pool, account: uuid.UUID) -> int:
    return int(
        await pool.fetchval(
            "SELECT coalesce(sum(balance), 0)::bigint FROM balances WHERE account_id = $1",
            account,
        )
    )


async def data(pool: asyncpg.Pool, outcome: Outcome) -> dict[str, Any]:
    payload = await pool.fetchval(
        "SELECT payload FROM outbox WHERE event_id = $1", uuid.UUID(outcome.event_id)
    )
    return dict(orjson.loads(payload)["data"])


async def test_a_payment_splits_and_refunds_return_the_fee_in_proportion(pool: Any) -> None:
    writer = LedgerWriter(pool, {"basic": TierLimits()}, default_fee=FeeSchedule(150, 30))
    payer, seller = await shop(writer)
    fee_before = await balance(pool, FEE_REVENUE)
    paid = payment(payer, seller, 10_000)
    [done] = await apply_all(writer, paid)
    assert done.kind == OutcomeKind.COMPLETED
    completed = await data(pool, done)
    assert (completed["fee"], completed["balance_after"]) == (180, 90_000)
    assert await balance(pool, seller) == 9_820
    [first] = await apply_all(writer, refund(paid, 3_333))
    part = await data(pool, first)
    assert (part["fee_returned"], part["refunded_total"], part["balance_after"]) == (
        59,
        3_333,
        9_820 - 3_274,
    )
    [rest] = await apply_all(writer, refund(paid, 6_667))
    assert (await data(pool, rest))["fee_returned"] == 121
    # Refunded in full: every account is exactly where it started.
    assert await balance(pool, payer) == 100_000
    assert await balance(pool, seller) == 0
    assert await balance(pool, FEE_REVENUE) == fee_before
    [over] = await apply_all(writer, refund(paid, 1))
    assert over.reason == "refund_exceeds_payment"
    await assert_audit_passes(pool)


async def test_refusals(pool: Any) -> None:
    writer = LedgerWriter(pool, {"basic": TierLimits()})
    payer, seller = await shop(writer)
    friend = onboarding()
    await apply_all(writer, friend)
    [not_a_shop] = await apply_all(writer, payment(payer, wallet_of(friend), 100))
    assert not_a_shop.reason == "not_a_merchant"
    paid = payment(payer, seller, 1_000)
    await apply_all(writer, paid)
    unknown = refund(payment(payer, seller, 1)).model_copy(update={"payment_id": uuid.uuid4()})
    [missing] = await apply_all(writer, unknown)
    assert missing.reason == "payment_not_found"
    [too_much] = await apply_all(writer, refund(paid, 1_001))
    assert too_much.reason == "refund_exceeds_payment"
    [broke] = await apply_all(writer, payment(payer, seller, 10**6))
    assert broke.reason == "insufficient_funds"
    # Replays and conflicts, for both commands.
    [again] = await apply_all(writer, paid)
    assert again.kind == OutcomeKind.REPLAYED
    [other] = await apply_all(writer, paid.model_copy(update={"amount": 999}))
    assert other.reason == "id_conflict"
    back = refund(paid, 10)
    [ok] = await apply_all(writer, back)
    [replayed] = await apply_all(writer, back)
    assert (replayed.kind, replayed.event_id) == (OutcomeKind.REPLAYED, ok.event_id)
    [conflict] = await apply_all(writer, back.model_copy(update={"amount": 11}))
    assert conflict.reason == "id_conflict"
    await assert_audit_passes(pool)


async def test_the_fee_in_force_when_the_payment_is_applied(pool: Any) -> None:
    writer = LedgerWriter(pool, {"basic": TierLimits()}, default_fee=FeeSchedule(150, 0))
    payer, seller = await shop(writer)
    customer = await pool.fetchval("SELECT customer_id FROM accounts WHERE id = $1", seller)
    [before] = await apply_all(writer, payment(payer, seller, 10_000))
    assert (await data(pool, before))["fee"] == 150
    await pool.execute(
        "INSERT INTO merchant_fees (customer_id, bps, fixed, changed_by)"
        " VALUES ($1, 50, 25, 'ops')",
        customer,
    )
    [after] = await apply_all(writer, payment(payer, seller, 10_000))
    assert (await data(pool, after))["fee"] == 75
    await assert_audit_passes(pool)


async def test_racing_partial_refunds_never_pass_the_payment(pool: Any) -> None:
    writer = LedgerWriter(pool, {"basic": TierLimits()}, default_fee=FeeSchedule(300, 7))
    payer, seller = await shop(writer)
    paid = payment(payer, seller, 10_000)
    await apply_all(writer, paid)
    writers = [LedgerWriter(pool, writer.limits) for _ in range(RACERS)]
    # 20 refunds of 700 each race (14,000 asked of 10,000): at most 14 fit.
    outcomes = await asyncio.gather(*(apply_all(w, refund(paid, 700)) for w in writers))
    completed = [o for [o] in outcomes if o.kind == OutcomeKind.COMPLETED]
    refused = [o for [o] in outcomes if o.kind == OutcomeKind.REJECTED]
    assert len(completed) == 14
    assert {o.reason for o in refused} == {"refund_exceeds_payment"}
    row = await pool.fetchrow(
        "SELECT refunded, fee, fee_returned FROM payments WHERE payment_id = $1",
        paid.payment_id,
    )
    assert row["refunded"] == 9_800
    assert row["fee_returned"] == row["fee"] * 9_800 // 10_000
    await assert_audit_passes(pool)
