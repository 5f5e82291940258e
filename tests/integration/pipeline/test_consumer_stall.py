"""A flow's consumer that stops fetching without a word is noticed from the lag and replaced."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ledgerflow.contracts.topics import TRANSFER
from ledgerflow.testkit.commands import transfer
from ledgerflow.testkit.pipeline import fund_wallets, publish, running_pipeline
from ledgerflow.testkit.plugin import wait_until
from ledgerflow.testkit.scrape import scrape

pytestmark = pytest.mark.integration

MARKER = "STALL-HERE-91c2"
LAG_INTERVAL_MS = "200"
STALL_ROUNDS = "5"  # a second without deliveries while commands wait


async def test_a_consumer_that_stops_fetching_is_restarted_and_the_commands_complete(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    async with running_pipeline(
        postgres,
        kafka,
        ledgerflow_db_template,
        tmp_path,
        fault_stall_marker=MARKER,
        lag_interval_ms=LAG_INTERVAL_MS,
        consumer_stall_rounds=STALL_ROUNDS,
    ) as p:
        a, b = await fund_wallets(p, 2, 10_000)
        # The transfer consumer stops fetching once it handled the marked transfer.
        stop = transfer(a, b, 5).model_copy(update={"note": MARKER})
        await publish(p.producer, stop, TRANSFER, p.prefix)
        [event] = await p.results.wait_for_key(str(stop.transfer_id), timeout_s=60)
        assert event["type"] == "transfer.completed"
        behind = [transfer(a, b, n) for n in range(1, 21)]
        for command in behind:
            await publish(p.producer, command, TRANSFER, p.prefix)
        for command in behind:
            [event] = await p.results.wait_for_key(str(command.transfer_id), timeout_s=60)
            assert event["type"] == "transfer.completed"
        restarts = scrape(p.worker)
        assert restarts.total("ledgerflow_consumer_restarts_total", flow="transfer") == 1
        assert restarts.has("ledgerflow_consumer_restarts_total", flow="cashin")
        assert restarts.total("ledgerflow_consumer_restarts_total", flow="cashin") == 0
        warnings = [
            json.loads(line)
            for line in p.worker.log_path.read_text().splitlines()
            if "consumer stalled" in line
        ]
        assert [(w["flow"], w["level"]) for w in warnings] == [("transfer", "warning")]
        assert warnings[0]["lag"] >= 1
        # Ready again once the new consumer holds its partitions.
        await wait_until(lambda: p.worker.get("/readyz")[0] == 200, timeout_s=30)
