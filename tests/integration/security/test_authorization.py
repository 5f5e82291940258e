"""Authenticated commands end to end: owners, scopes, and ids nobody else can burn."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from ledgerflow.contracts.topics import CASHIN, ONBOARDING, TRANSFER
from ledgerflow.harness.identity import Issuer
from ledgerflow.testkit.commands import cashin, onboarding, transfer, wallet_of
from ledgerflow.testkit.pipeline import Pipeline, event_id_of, publish, running_pipeline

pytestmark = pytest.mark.integration


async def answer(p: Pipeline, command: Any, flow: Any, bearer: str | None) -> dict[str, Any]:
    rec = await publish(p.producer, command, flow, p.prefix, authorization=bearer)
    [event] = await p.results.wait_for(event_id_of(rec), timeout_s=60)
    return event


async def test_only_owners_move_their_money(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    idp = Issuer()
    async with running_pipeline(
        postgres, kafka, ledgerflow_db_template, tmp_path, **idp.settings(tmp_path / "jwks.json")
    ) as p:
        alice, bob = onboarding(), onboarding()
        for person, sub in ((alice, "alice"), (bob, "bob")):
            event = await answer(p, person, ONBOARDING, idp.bearer(sub))
            assert event["type"] == "onboarding.completed"
        a, b = wallet_of(alice), wallet_of(bob)

        by_user = await answer(p, cashin(a, 1_000), CASHIN, idp.bearer("alice"))
        assert by_user["data"]["reason"] == "unauthorized", "cash-in needs the service scope"
        funded = await answer(p, cashin(a, 1_000), CASHIN, idp.service_bearer())
        assert funded["type"] == "cashin.completed"

        theft = transfer(a, b, 700)
        refused = await answer(p, theft, TRANSFER, idp.bearer("mallory"))
        assert refused["data"]["reason"] == "unauthorized"
        unsigned = await answer(p, theft, TRANSFER, None)
        assert unsigned["data"]["reason"] == "unauthorized"
        # The refused attempts burned nothing: the owner can still use that very id.
        sent = await answer(p, theft, TRANSFER, idp.bearer("alice", data_hash=None))
        assert sent["type"] == "transfer.completed"
        assert sent["data"]["balance_after"] == 300

        conn = await asyncpg.connect(p.database.app_url)
        try:
            recorded = await conn.fetchval(
                "SELECT count(*) FROM idempotency_records WHERE reason = 'unauthorized'"
            )
            owner = await conn.fetchval(
                "SELECT c.subject FROM customers c JOIN accounts a ON a.customer_id = c.id"
                " WHERE a.id = $1",
                a,
            )
        finally:
            await conn.close()
        assert recorded == 0
        assert owner == "alice"
        _, metrics = p.worker.get("/metrics")
        # Both refusals answered unauthorized; one failed at the token, one at the owner check.
    assert (
        'ledgerflow_commands_total{flow="transfer",outcome="unauthorized",reason="unauthorized"}'
        " 2.0" in metrics
    )
    assert 'ledgerflow_unauthorized_commands_total{flow="transfer"} 1.0' in metrics
