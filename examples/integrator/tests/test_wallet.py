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


async def test_the_wallet_app_reads_the_balance_and_history(ledgerflow_pipeline):
    p = ledgerflow_pipeline
    alice, bob = onboarding(), onboarding()
    for c in (alice, bob, cashin(wallet_of(alice), 2_000)):
        await p.send(c)
    await p.send(transfer(wallet_of(alice), wallet_of(bob), 500))
    wallet = (await p.get(f"/v1/wallets/{wallet_of(alice)}", scope="ledger:read")).json()
    assert (wallet["balance"], wallet["available"]) == (1_500, 1_500)
    page = (await p.get(f"/v1/wallets/{wallet_of(alice)}/entries", scope="ledger:read")).json()
    history = [(e["amount"], e["balance_after"]) for e in page["items"]]
    assert history == [(-500, 1_500), (2_000, 2_000)]  # newest first
