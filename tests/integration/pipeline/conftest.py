"""A running pipeline per test module: its own database and topics, a worker and a relay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiokafka import AIOKafkaProducer

from testkit.pipeline import Pipeline, ResultCollector, ledgerflow_env, start_process
from testkit.plugin import (
    create_test_database,
    delete_topics_with_prefix,
    drop_test_database,
    unique_prefix,
)
from workers.topics import ensure_topics, topic_specs


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pipeline(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path_factory: Any
) -> AsyncIterator[Pipeline]:
    db = await create_test_database(postgres, ledgerflow_db_template)
    prefix = unique_prefix()
    await ensure_topics(kafka.bootstrap_servers, topic_specs(prefix, 6, 6, 1), 1)
    env = ledgerflow_env(db.app_url, kafka.bootstrap_servers, prefix, batch_wait_ms="5")
    log_dir = tmp_path_factory.mktemp("processes")
    worker = start_process(["worker", "all"], env, log_dir)
    relay = start_process(["relay"], env, log_dir)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=True)
    await producer.start()
    results = ResultCollector(kafka.bootstrap_servers, prefix)
    await results.start()
    try:
        yield Pipeline(db, prefix, kafka.bootstrap_servers, env, worker, relay, producer, results,
                       log_dir)
    finally:
        await results.stop()
        await producer.stop()
        for process in (worker, relay):
            process.stop()
        await drop_test_database(postgres, db.name)
        await delete_topics_with_prefix(kafka.bootstrap_servers, prefix)
