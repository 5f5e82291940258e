"""A message that fails every time (a handler bug, injected) is dead-lettered; the rest flows."""

from __future__ import annotations

from typing import Any

import pytest

from cli.dlq_cmd import read_dead_letters
from contracts.topics import CASHIN, ONBOARDING, TRANSFER
from testkit.commands import cashin, onboarding, transfer, wallet_of
from testkit.pipeline import event_id_of, publish, running_pipeline

pytestmark = pytest.mark.integration

MARKER = "POISON-PILL-7f3a"


async def test_poison_message_is_dead_lettered_and_the_partition_moves_on(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    async with running_pipeline(
        postgres, kafka, ledgerflow_db_template, tmp_path, fault_poison_marker=MARKER
    ) as p:
        alice, bob = onboarding(), onboarding()
        for command, flow in ((alice, ONBOARDING), (bob, ONBOARDING)):
            await p.results.wait_for(
                event_id_of(await publish(p.producer, command, flow, p.prefix))
            )
        a, b = wallet_of(alice), wallet_of(bob)
        await p.results.wait_for(
            event_id_of(await publish(p.producer, cashin(a, 1_000), CASHIN, p.prefix))
        )
        before = transfer(a, b, 10)
        poison = transfer(a, b, 20).model_copy(update={"note": MARKER})
        after = transfer(a, b, 30)
        for command in (before, poison, after):
            await publish(p.producer, command, TRANSFER, p.prefix)
        for good in (before, after):
            [event] = await p.results.wait_for_key(str(good.transfer_id), timeout_s=60)
            assert event["type"] == "transfer.completed"
        [letter] = await read_dead_letters(p.bootstrap, [p.prefix + TRANSFER.dlq_topic], limit=10)
        headers = dict(letter.headers)
        assert headers["x-error-class"] == b"processing_InjectedFault"
        assert MARKER.encode() in letter.value
        assert str(poison.transfer_id) not in p.results.by_command_key
        _, metrics = p.worker.get("/metrics")
        assert "ledgerflow_batch_failures_total" in metrics
