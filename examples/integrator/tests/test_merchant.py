"""A merchant paid, then refunded in part: the fee comes back in proportion."""

from ledgerflow.testkit.commands import cashin, merchant, onboarding, payment, refund, wallet_of


async def test_a_payment_refunded_in_part(ledgerflow_pipeline):
    p = ledgerflow_pipeline
    alice, shop = onboarding(), merchant()
    for c in (alice, shop, cashin(wallet_of(alice), 10_000)):
        await p.send(c)
    paid = payment(wallet_of(alice), wallet_of(shop), 10_000)
    assert (await p.send(paid))["data"]["fee"] == 150  # the default 1.5 %
    back = await p.send(refund(paid, 5_000))  # signed by the merchant
    assert back["type"] == "refund.completed" and back["data"]["fee_returned"] == 75
