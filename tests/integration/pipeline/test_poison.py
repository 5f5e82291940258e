"""A message that fails every time (a handler bug, injected) is dead-lettered; the rest flows."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from ledgerflow.cli.dlq_cmd import read_dead_letters
from ledgerflow.contracts.topics import CASHIN, ONBOARDING, TRANSFER
from ledgerflow.testkit.commands import cashin, onboarding, record, transfer, wallet_of
from ledgerflow.testkit.pipeline import event_id_of, fund_wallets, publish, running_pipeline
from ledgerflow.workers.dead_letters import TRUNCATED_VALUE_BYTES_MAX
from ledgerflow.workers.kafka_io import PRODUCER_REQUEST_BYTES_MAX

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


async def test_a_dead_letter_too_large_to_write_whole_is_written_truncated(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    """A command within 1 KiB of the size limit: accepted on its topic, too large for the worker
    (dead-lettered unparsed), and too large for the dead-letter topic once the error headers are
    added. The letter is written truncated, with the error, and the partition moves on."""
    limit = PRODUCER_REQUEST_BYTES_MAX
    key = b"k" * 36
    headers = [("content-type", b"application/cloudevents+json")]
    value = b"x" * (limit - 1_024)
    while DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value + b"x" * 64, headers) < limit:
        value += b"x" * 64  # as close to the limit as 64 bytes: the letter's headers won't fit
    async with running_pipeline(postgres, kafka, ledgerflow_db_template, tmp_path) as p:
        topic = p.prefix + TRANSFER.command_topic
        await p.producer.send_and_wait(topic, value, key=key, headers=headers, partition=0)
        a, b = await fund_wallets(p, 2, 1_000)
        after = transfer(a, b, 30)
        await p.producer.send_and_wait(
            topic, record(after).value, key=key, headers=headers, partition=0
        )
        [event] = await p.results.wait_for_key(str(after.transfer_id), timeout_s=60)
        assert event["type"] == "transfer.completed"
        [letter] = await read_dead_letters(p.bootstrap, [p.prefix + TRANSFER.dlq_topic], limit=10)
        letter_headers = dict(letter.headers)
        assert letter_headers["x-error-class"] == b"too_large", letter_headers
        assert letter_headers["x-truncated"] == f"value of {len(value)} bytes cut".encode()
        assert letter_headers["x-original-partition"] == b"0"
        assert len(letter.value) == TRUNCATED_VALUE_BYTES_MAX
        _, metrics = p.worker.get("/metrics")
        assert f'ledgerflow_dead_letters_truncated_total{{topic="{topic}"}} 1.0' in metrics
