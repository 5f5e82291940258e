"""A message that fails every time (a handler bug, injected) is dead-lettered; the rest flows."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from ledgerflow.cli.dlq_cmd import read_dead_letters
from ledgerflow.contracts.codec import encode_command
from ledgerflow.contracts.topics import CASHIN, ONBOARDING, TRANSFER
from ledgerflow.ledger_db.queries import get_account
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


async def test_binary_and_null_header_values_lose_no_command(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    """Kafka allows any bytes, or null, as a header value. FastStream's batch parser decoded
    every header of a batch as strict UTF-8 and, on the first that was not, dropped the whole
    batch with a log line (the next batch's commit skipped it). Every command here applies,
    in one partition, the odd ones among them, and the money adds up."""
    async with running_pipeline(postgres, kafka, ledgerflow_db_template, tmp_path) as p:
        a, b = await fund_wallets(p, 2, 1_000)
        commands = [transfer(a, b, 10 + i) for i in range(8)]
        odd: dict[int, list[tuple[str, bytes | None]]] = {
            0: [("x-binary", b"\xff\xfe\x00")],
            3: [("x-null", None)],
            5: [("x-binary", b"\x80"), ("x-null", None)],
        }
        sent = []
        for i, command in enumerate(commands):
            rec = encode_command(TRANSFER, command, topic_prefix=p.prefix)
            headers = [*rec.headers, *odd.get(i, [])]
            sent.append(
                await p.producer.send(
                    rec.topic, rec.value, key=rec.key, headers=headers, partition=0
                )
            )
        await asyncio.gather(*sent)
        for command in commands:
            [event] = await p.results.wait_for_key(str(command.transfer_id), timeout_s=60)
            assert event["type"] == "transfer.completed", event
        connection = await asyncpg.connect(p.database.app_url)
        try:
            views = [await get_account(connection, wallet) for wallet in (a, b)]
        finally:
            await connection.close()
        moved = sum(c.amount for c in commands)
        assert [v.balance if v else None for v in views] == [1_000 - moved, 1_000 + moved]
        assert await read_dead_letters(p.bootstrap, [p.prefix + TRANSFER.dlq_topic], limit=10) == []
