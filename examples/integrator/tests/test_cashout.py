"""A held cash-out (two-phase): the money is reserved until the payout service answers."""

from ledgerflow.testkit.commands import cashin, held_cashout, onboarding, settle, wallet_of


async def test_a_held_cash_out_settled_by_the_bank(ledgerflow_pipeline):
    p = ledgerflow_pipeline
    alice = onboarding()
    for c in (alice, cashin(wallet_of(alice), 1_000)):
        await p.send(c)
    payout = held_cashout(wallet_of(alice), 400, fee=5)
    held = await p.send(payout)
    assert held["type"] == "cashout.held" and held["data"]["available_after"] == 595
    done = await p.send(settle(payout))  # the payout service's answer, signed with its scope
    assert done["type"] == "cashout.completed" and done["data"]["balance_after"] == 595
