from ledgerflow.testkit.commands import cashin, onboarding, transfer, wallet_of


async def test_p2p(ledgerflow_pipeline):
    p = ledgerflow_pipeline
    alice, bob = onboarding(), onboarding()
    for c in (alice, bob, cashin(wallet_of(alice), 5_000)):
        await p.send(c)
    event = await p.send(transfer(wallet_of(alice), wallet_of(bob), 1_250))
    assert event["type"] == "transfer.completed" and event["data"]["balance_after"] == 3_750


async def test_a_transfer_beyond_the_balance_is_rejected(ledgerflow_pipeline):
    p = ledgerflow_pipeline
    alice, bob = onboarding(), onboarding()
    for c in (alice, bob, cashin(wallet_of(alice), 1_000)):
        await p.send(c)
    event = await p.send(transfer(wallet_of(alice), wallet_of(bob), 1_001))
    assert event["type"] == "transfer.rejected"
    assert event["data"]["reason"] == "insufficient_funds"


async def test_a_duplicate_gets_the_first_answer_and_moves_money_once(ledgerflow_pipeline):
    p = ledgerflow_pipeline
    alice, bob = onboarding(), onboarding()
    for c in (alice, bob, cashin(wallet_of(alice), 1_000)):
        await p.send(c)
    payment = transfer(wallet_of(alice), wallet_of(bob), 300)
    first = await p.send(payment)
    again = await p.send(payment)  # an upstream retry: same id, same content
    assert again["id"] == first["id"] and again["data"] == first["data"]
    after = await p.send(transfer(wallet_of(alice), wallet_of(bob), 1))
    assert after["data"]["balance_after"] == 699
