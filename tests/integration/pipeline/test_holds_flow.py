"""Holds end to end (DESIGN.md §5.1): signed commands on Kafka, the cash-out worker's three
topics and its expiry sweep, answers on Kafka — real processes, authentication on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledgerflow.testkit.commands import (
    cashin,
    held_cashout,
    onboarding,
    returned,
    settle,
    transfer,
    wallet_of,
)
from ledgerflow.testkit.pipeline import Pipeline, running_pipeline
from ledgerflow.testkit.plugin import assert_audit_passes

pytestmark = pytest.mark.integration

HOLD_EXPIRES_S = "3"  # the deployment's default: short, so a hold left alone expires here


async def test_hold_settle_return_expiry_through_the_workers(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Path
) -> None:
    async with running_pipeline(
        postgres,
        kafka,
        ledgerflow_db_template,
        tmp_path,
        signed=True,
        hold_expires_s=HOLD_EXPIRES_S,
        hold_expiry_interval_s="0.2",
    ) as p:
        await check_every_path(p)


async def check_every_path(p: Pipeline) -> None:
    alice, bob = onboarding(), onboarding()
    for c in (alice, bob, cashin(wallet_of(alice), 10_000)):
        await p.send(c)
    a, b = wallet_of(alice), wallet_of(bob)

    paid = held_cashout(a, 3_000, fee=100, expires_in_s=3_600)
    held = await p.send(paid)
    assert held["type"] == "cashout.held"
    assert held["data"]["available_after"] == 6_900
    # Held money cannot be spent meanwhile.
    spent = await p.send(transfer(a, b, 7_000))
    assert spent["data"]["reason"] == "insufficient_funds"
    # A customer cannot settle their own cash-out: the payout service's scope is needed.
    forged = await p.send(settle(paid), as_subject="mallory")
    assert forged["data"]["reason"] == "unauthorized"
    done = await p.send(settle(paid))
    assert done["type"] == "cashout.completed"
    assert done["data"]["balance_after"] == 6_900
    again = await p.send(settle(paid))
    assert again["id"] == done["id"]  # a replay, byte for byte

    bounced = held_cashout(a, 1_000, expires_in_s=3_600)
    await p.send(bounced)
    voided = await p.send(returned(bounced))
    assert voided["type"] == "cashout.voided"
    assert voided["data"]["reason"] == "returned"
    assert voided["data"]["available_after"] == 6_900

    reversed_ = await p.send(returned(paid, return_code="AC04"))
    assert reversed_["type"] == "cashout.reversed"
    assert reversed_["data"]["balance_after"] == 10_000

    # Left alone: the cash-out worker voids it once its time (the deployment's default) is up.
    forgotten = held_cashout(a, 500)
    assert (await p.send(forgotten))["type"] == "cashout.held"
    answers = await p.results.wait_for_key(str(forgotten.cashout_id), 30, count=2)
    assert [e["type"] for e in answers] == ["cashout.held", "cashout.voided"], answers
    expired = answers[1]
    assert expired["data"]["reason"] == "expired"
    late = await p.send(settle(forgotten))
    assert (late["type"], late["data"]["reason"]) == ("cashout.rejected", "hold_expired")
    assert late["data"]["answers"] == "cashout.settled"

    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(p.database.owner_url)
    try:
        assert await conn.fetchval("SELECT held FROM balances WHERE account_id = $1", a) == 0
    finally:
        await conn.close()
    await assert_audit_passes(p.database.owner_url)
