"""Commands in on Kafka, money moved once in PostgreSQL, results out on Kafka — real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import orjson
import pytest

from ledgerflow.cli.dlq_cmd import read_dead_letters
from ledgerflow.contracts.topics import CASHIN, CASHOUT, ONBOARDING, TRANSFER
from ledgerflow.testkit.commands import cashin, cashout, onboarding, record, transfer, wallet_of
from ledgerflow.testkit.pipeline import Pipeline, event_id_of, publish
from ledgerflow.testkit.plugin import wait_until

pytestmark = pytest.mark.integration


async def result_of(p: Pipeline, command: object, flow: object) -> dict[str, object]:
    rec = await publish(p.producer, command, flow, p.prefix)  # type: ignore[arg-type]
    [event] = await p.results.wait_for(event_id_of(rec))
    return event


async def test_the_four_flows_end_to_end(pipeline: Pipeline) -> None:
    alice, bob = onboarding(), onboarding()
    for person in (alice, bob):
        event = await result_of(pipeline, person, ONBOARDING)
        assert event["type"] == "onboarding.completed"
        assert event["data"]["tier"] == "basic"  # type: ignore[index]
        assert event["data"]["wallet_account_id"] == str(wallet_of(person))  # type: ignore[index]
    a, b = wallet_of(alice), wallet_of(bob)
    assert (await result_of(pipeline, cashin(a, 10_000), CASHIN))["type"] == "cashin.completed"
    sent = await result_of(pipeline, transfer(a, b, 2_500), TRANSFER)
    assert sent["type"] == "transfer.completed"
    assert sent["data"]["balance_after"] == 7_500  # type: ignore[index]
    assert sent["_key"] == str(a).encode(), "a result is keyed like its command"
    assert sent["_headers"]["content-type"] == b"application/cloudevents+json"  # type: ignore[index]
    out = await result_of(pipeline, cashout(b, 2_000, fee=100), CASHOUT)
    assert out["data"]["balance_after"] == 400  # type: ignore[index]
    refused = await result_of(pipeline, transfer(b, a, 1_000), TRANSFER)
    assert refused["type"] == "transfer.rejected"
    assert refused["data"]["reason"] == "insufficient_funds"  # type: ignore[index]
    conn = await asyncpg.connect(pipeline.database.app_url)
    try:
        balances = dict(
            await conn.fetch(
                "SELECT account_id, balance FROM balances WHERE account_id = ANY($1::uuid[])",
                [a, b],
            )
        )
    finally:
        await conn.close()
    assert balances == {a: 7_500, b: 400}


async def test_duplicate_is_replayed_with_the_original_id_and_conflict_rejected(
    pipeline: Pipeline,
) -> None:
    alice, bob = onboarding(), onboarding()
    await result_of(pipeline, alice, ONBOARDING)
    await result_of(pipeline, bob, ONBOARDING)
    a, b = wallet_of(alice), wallet_of(bob)
    await result_of(pipeline, cashin(a, 1_000), CASHIN)
    command = transfer(a, b, 300)
    first = await result_of(pipeline, command, TRANSFER)
    await publish(pipeline.producer, command, TRANSFER, pipeline.prefix)
    key = str(command.transfer_id)
    answers = await pipeline.results.wait_for_key(key, count=2)
    assert answers[1]["id"] == first["id"], "the replay carries the original CloudEvents id"
    assert answers[1]["data"] == first["data"]
    conflict = await result_of(pipeline, command.model_copy(update={"amount": 301}), TRANSFER)
    assert conflict["data"]["reason"] == "id_conflict"  # type: ignore[index]
    assert len(await pipeline.results.wait_for_key(key, count=3)) == 3
    conn = await asyncpg.connect(pipeline.database.app_url)
    try:
        assert await conn.fetchval("SELECT balance FROM balances WHERE account_id = $1", a) == 700
    finally:
        await conn.close()


async def test_invalid_command_is_answered(pipeline: Pipeline) -> None:
    alice = onboarding()
    await result_of(pipeline, alice, ONBOARDING)
    good = cashin(wallet_of(alice), 100)
    envelope = orjson.loads(record(good).value)
    envelope["id"] = "invalid-1"
    envelope["data"]["amount"] = 1.5
    topic = pipeline.prefix + CASHIN.command_topic
    await pipeline.producer.send_and_wait(topic, orjson.dumps(envelope), key=b"k")
    [event] = await pipeline.results.wait_for("invalid-1")
    assert event["type"] == "cashin.rejected"
    assert event["data"]["reason"] == "invalid_command"  # type: ignore[index]
    assert event["data"]["cashin_id"] == str(good.cashin_id)  # type: ignore[index]


async def test_garbage_goes_to_the_dead_letter_topic_and_the_worker_goes_on(
    pipeline: Pipeline,
) -> None:
    topic = pipeline.prefix + TRANSFER.command_topic
    await pipeline.producer.send_and_wait(topic, b"\xff not json", key=b"garbage")
    [letter] = await read_dead_letters(
        pipeline.bootstrap, [pipeline.prefix + TRANSFER.dlq_topic], limit=10
    )
    assert letter.value == b"\xff not json"
    headers = dict(letter.headers)
    assert headers["x-original-topic"] == topic.encode()
    assert {"x-error", "x-error-class", "x-original-partition", "x-original-offset"} <= set(headers)
    # The partition moved on: a valid command after the garbage is answered.
    alice = onboarding()
    event = await result_of(pipeline, alice, ONBOARDING)
    assert event["type"] == "onboarding.completed"

    async def metric_counted() -> bool:
        _, text = pipeline.worker.get("/metrics")
        return f'ledgerflow_dead_letters_total{{topic="{TRANSFER.command_topic}"}} 1.0' in text

    await wait_until(metric_counted, timeout_s=10, message="dead letter metric")


async def test_health_endpoints(pipeline: Pipeline) -> None:
    assert pipeline.worker.get("/healthz")[0] == 200
    assert pipeline.worker.get("/readyz")[0] == 200
    assert pipeline.relay.get("/readyz")[0] == 200


async def test_dlq_command_shows_and_replays(pipeline: Pipeline) -> None:
    topic = pipeline.prefix + CASHOUT.command_topic
    await pipeline.producer.send_and_wait(topic, b"{not json", key=b"k1")

    def show() -> list[dict[str, object]]:
        out = subprocess.run(
            [sys.executable, "-m", "ledgerflow.cli", "dlq", "show", "--flow", "cashout", "--json"],
            env=pipeline.env,
            capture_output=True,
            check=True,
            timeout=60,
        )
        return list(orjson.loads(out.stdout))

    await wait_until(lambda: len(show()) == 1, timeout_s=30, message="dead letter listed")
    [letter] = show()
    assert letter["error_class"] == "not_json"
    assert letter["original_topic"] == topic
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ledgerflow.cli", "dlq", "replay", "--flow", "cashout"],
        env=pipeline.env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    # Replayed unchanged, it is dead-lettered again: the topic now holds two letters.
    await wait_until(lambda: len(show()) == 2, timeout_s=30, message="replayed letter back")


def idle_gauge(pipeline: Pipeline, flow: str) -> float | None:
    _, text = pipeline.worker.get("/metrics")
    for line in text.splitlines():
        if line.startswith(f'ledgerflow_consumer_idle{{flow="{flow}"}}'):
            return float(line.split()[-1])
    return None


async def test_an_idle_flow_waits_at_the_broker_and_answers_at_once(
    pipeline: Pipeline,
) -> None:
    await wait_until(
        lambda: idle_gauge(pipeline, CASHIN.name) == 1.0,
        timeout_s=30,
        message="the cash-in consumer idle",
    )
    person = onboarding()
    assert (await pipeline.send(person))["type"] == "onboarding.completed"
    answer = await pipeline.send(cashin(wallet_of(person), 500), timeout_s=10)
    assert answer["type"] == "cashin.completed"
    assert answer["data"]["balance_after"] == 500
