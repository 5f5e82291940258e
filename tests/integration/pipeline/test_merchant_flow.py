"""Merchants end to end (DESIGN.md §5.2): signed payments and refunds through the transfer
worker, answers on Kafka — real processes, authentication on."""

from __future__ import annotations

from typing import Any

import pytest

from ledgerflow.testkit.commands import (
    cashin,
    merchant,
    onboarding,
    payment,
    refund,
    wallet_of,
)

pytestmark = pytest.mark.integration


async def test_pay_a_merchant_and_get_refunded(ledgerflow_pipeline: Any) -> None:
    p = ledgerflow_pipeline
    alice, shop = onboarding(), merchant()
    opened = await p.send(shop)
    assert opened["data"]["kind"] == "merchant"
    await p.send(alice)
    await p.send(cashin(wallet_of(alice), 20_000))
    paid = payment(wallet_of(alice), wallet_of(shop), 10_000)
    done = await p.send(paid)
    assert done["type"] == "payment.completed"
    assert (done["data"]["fee"], done["data"]["balance_after"]) == (150, 10_000)  # 1.5 %
    # Only the merchant may refund: the payer's own token is refused.
    forged = await p.send(refund(paid, 100), as_subject=f"user-{alice.customer_id}")
    assert forged["data"]["reason"] == "unauthorized"
    part = await p.send(refund(paid, 4_000))
    assert part["type"] == "refund.completed"
    assert (part["data"]["fee_returned"], part["data"]["refunded_total"]) == (60, 4_000)
    rest = await p.send(refund(paid, 6_000))
    assert rest["data"]["fee_returned"] == 90
    assert rest["data"]["balance_after"] == 0  # the merchant gave it all back
    over = await p.send(refund(paid, 1))
    assert over["data"]["reason"] == "refund_exceeds_payment"
    # Paying someone who is not a merchant.
    bob = onboarding()
    await p.send(bob)
    wrong = await p.send(payment(wallet_of(alice), wallet_of(bob), 10))
    assert wrong["data"]["reason"] == "not_a_merchant"
