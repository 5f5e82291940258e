"""Metrics move as they should under a real workload: real worker and relay processes.

Counts equal the commands sent; consumer lag rises while the worker is stopped and falls to zero
once a worker runs again (the relay measures it, so it is reported while no worker runs).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from ledgerflow.contracts.topics import CASHIN, FLOWS, ONBOARDING, TRANSFER
from ledgerflow.testkit.commands import cashin, onboarding, transfer, wallet_of
from ledgerflow.testkit.pipeline import event_id_of, publish, running_pipeline
from ledgerflow.testkit.plugin import wait_until
from ledgerflow.testkit.scrape import Samples, scrape

if TYPE_CHECKING:
    from ledgerflow.testkit.pipeline import Pipeline

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
LAG_INTERVAL_MS = "200"
TRANSFERS = 10
WHILE_STOPPED = 7


async def send_and_wait(p: Pipeline, items: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
    records = [await publish(p.producer, command, flow, p.prefix) for command, flow in items]
    events = []
    for rec in records:
        events += await p.results.wait_for(event_id_of(rec), timeout_s=TIMEOUT_S)
    return events


def lag(samples: Samples, p: Pipeline, flow: str) -> float:
    return samples.total("ledgerflow_consumer_lag_messages", group=f"{p.prefix}ledgerflow.{flow}")


async def test_metrics_follow_the_workload_and_lag_follows_the_worker(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    started = time.time()
    async with running_pipeline(
        postgres, kafka, ledgerflow_db_template, tmp_path, lag_interval_ms=LAG_INTERVAL_MS
    ) as p:
        alice, bob = onboarding(), onboarding()
        a, b = wallet_of(alice), wallet_of(bob)
        await send_and_wait(p, [(alice, ONBOARDING), (bob, ONBOARDING)])
        await send_and_wait(p, [(cashin(a, 10_000), CASHIN)])
        events = await send_and_wait(
            p,
            [(transfer(a, b, 100), TRANSFER) for _ in range(TRANSFERS)]
            + [(transfer(b, a, 100_000), TRANSFER)],
        )
        assert [e["type"] for e in events].count("transfer.rejected") == 1
        topic = p.prefix + TRANSFER.command_topic
        await p.producer.send_and_wait(topic, b"\xff not a command", key=b"garbage")
        sent = {"onboarding": 2, "cashin": 1, "transfer": TRANSFERS + 1}
        total = sum(sent.values())

        def worker_counted() -> bool:
            return scrape(p.worker).total("ledgerflow_dead_letters_total") == 1

        await wait_until(worker_counted, timeout_s=TIMEOUT_S, message="the dead letter counted")
        worker = scrape(p.worker)
        # Ledgerflow's own: counts equal the commands sent, per flow and outcome.
        assert worker.total("ledgerflow_commands_total") == total
        for flow, count in sent.items():
            assert worker.total("ledgerflow_commands_total", flow=flow) == count
        assert worker.total("ledgerflow_commands_total", outcome="completed") == total - 1
        assert (
            worker.total(
                "ledgerflow_commands_total",
                flow="transfer",
                outcome="rejected",
                reason="insufficient_funds",
            )
            == 1
        )
        assert worker.total("ledgerflow_dead_letters_total", topic="transfer.initiated") == 1
        assert worker.total("ledgerflow_batch_size_commands_sum") == total + 1  # + the garbage
        assert worker.total("ledgerflow_command_latency_seconds_count") == total + 1
        assert worker.total("ledgerflow_batch_duration_seconds_count") >= len(sent)
        # Every batch that decided commands took and held its row locks for a measured while.
        locked = worker.total("ledgerflow_batch_locked_seconds_count")
        assert locked >= len(sent)
        assert worker.total("ledgerflow_batch_lock_wait_seconds_count") == locked
        assert worker.total("ledgerflow_batch_locked_seconds_sum") > 0
        assert worker.total("ledgerflow_batch_failures_total") == 0
        # FastStream's middleware: every record received and acked, per handler (topic).
        for flow, count in sent.items():
            handler = (
                p.prefix
                + {"onboarding": ONBOARDING, "cashin": CASHIN}.get(flow, TRANSFER).command_topic
            )
            extra = 1 if flow == "transfer" else 0  # the garbage
            assert worker.total("faststream_received_messages_total", handler=handler) == (
                count + extra
            )
            assert worker.total(
                "faststream_received_processed_messages_total", handler=handler, status="acked"
            ) == (count + extra)
        assert worker.has("faststream_received_processed_messages_duration_seconds_bucket")
        # Process state.
        for flow in sent:
            assert worker.total("ledgerflow_assigned_partitions", flow=flow) == 6
            assert worker.total("ledgerflow_last_processed_timestamp_seconds", flow=flow) >= (
                started
            )
        assert worker.total("ledgerflow_db_pool_connections_max") == 4
        assert worker.has("ledgerflow_db_pool_connections", state="in_use")
        assert worker.has("ledgerflow_db_pool_connections", state="idle")
        [build] = worker.labels_of("ledgerflow_build_info")
        assert build["component"] == "worker"
        assert build["version"]
        assert worker.has("process_resident_memory_bytes"), "process collector on the registry"
        # No label carries an account, customer or command id.
        for _name, labels in worker.values:
            for _key, value in labels:
                assert str(a) not in value
                assert str(b) not in value
                assert str(alice.customer_id) not in value

        # The relay published everything and the outbox drained.
        def relay_drained() -> bool:
            relay = scrape(p.relay)
            return (
                relay.total("ledgerflow_relay_published_total") == total
                and relay.total("ledgerflow_outbox_pending_rows") == 0
                and relay.total("ledgerflow_relay_active") == 1
            )

        await wait_until(relay_drained, timeout_s=TIMEOUT_S, message="relay metrics settle")
        assert scrape(p.relay).labels_of("ledgerflow_build_info")[0]["component"] == "relay"

        # Lag: zero while the worker keeps up ...
        await wait_until(
            lambda: all(lag(scrape(p.relay), p, f) == 0 for f in sent),
            timeout_s=TIMEOUT_S,
            message="lag zero while the worker runs",
        )
        # ... rises by exactly what is published while no worker runs ...
        p.worker.stop()
        late = [
            await publish(p.producer, transfer(a, b, 1), TRANSFER, p.prefix)
            for _ in range(WHILE_STOPPED)
        ]
        await wait_until(
            lambda: lag(scrape(p.relay), p, "transfer") == WHILE_STOPPED,
            timeout_s=TIMEOUT_S,
            message=f"transfer lag reaches {WHILE_STOPPED} with the worker stopped",
        )
        partitions = scrape(p.relay).labels_of("ledgerflow_consumer_lag_messages")
        assert {x["partition"] for x in partitions} == {str(i) for i in range(6)}
        assert {x["flow"] for x in partitions} == {flow.name for flow in FLOWS}
        # ... and falls to zero once a worker runs again.
        resumed = p.start("worker", "all")
        for rec in late:
            await p.results.wait_for(event_id_of(rec), timeout_s=TIMEOUT_S)
        await wait_until(
            lambda: (
                lag(scrape(p.relay), p, "transfer") == 0
                and lag(scrape(resumed), p, "transfer") == 0
            ),
            timeout_s=TIMEOUT_S,
            message="transfer lag back to zero after the worker resumed",
        )
        assert scrape(resumed).total("ledgerflow_commands_total", flow="transfer") == (
            WHILE_STOPPED
        )
