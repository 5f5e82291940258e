"""The `ledgerflow_pipeline` fixture as another team uses it: signed commands in, answers out
(the ten-line test itself runs from docs/testing.md and examples/integrator/)."""

from __future__ import annotations

from typing import Any

import pytest

from ledgerflow.testkit.commands import cashin, cashout, onboarding, transfer, wallet_of

pytestmark = pytest.mark.integration


async def test_send_answers_rejections_replays_and_strangers(ledgerflow_pipeline: Any) -> None:
    p = ledgerflow_pipeline
    alice, bob = onboarding(), onboarding()
    opened = await p.send(alice)
    assert opened["type"] == "onboarding.completed"
    await p.send(bob)
    await p.send(cashin(wallet_of(alice), 1_000))
    too_much = await p.send(transfer(wallet_of(alice), wallet_of(bob), 5_000))
    assert too_much["type"] == "transfer.rejected"
    assert too_much["data"]["reason"] == "insufficient_funds"
    # The same command again: its stored answer, byte for byte (same event id), money moved once.
    payout = cashout(wallet_of(alice), 400)
    first = await p.send(payout)
    again = await p.send(payout)
    assert first["type"] == "cashout.completed"
    assert again["id"] == first["id"]
    assert again["data"] == first["data"]
    # Signed by someone who does not own the wallet: refused, not applied.
    stolen = await p.send(transfer(wallet_of(alice), wallet_of(bob), 100), as_subject="mallory")
    assert stolen["type"] == "transfer.rejected"
    assert stolen["data"]["reason"] == "unauthorized"
    # Nothing else moved: alice has what the cash-out left.
    last = await p.send(transfer(wallet_of(alice), wallet_of(bob), 600))
    assert last["data"]["balance_after"] == 0
