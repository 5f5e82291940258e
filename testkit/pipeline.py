"""Run Ledgerflow's processes against a test stack and await result events by command id.

async with running_pipeline(postgres, kafka, ledgerflow_db_template, tmp_path) as p:
    rec = await publish(p.producer, command, TRANSFER, p.prefix)
    [event] = await p.results.wait_for(event_id_of(rec))
"""

from __future__ import annotations

import contextlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from cli.processes import ManagedProcess, free_port, ledgerflow_env, start_process
from cli.results import ResultCollector, event_id_of, publish
from ledger_db.apply import LedgerWriter
from ledger_db.rules import TierLimits
from ledger_db.unit_of_work import create_pool
from testkit.commands import apply_all, cashin, onboarding, wallet_of
from testkit.plugin import (
    create_test_database,
    delete_topics_with_prefix,
    drop_test_database,
    unique_prefix,
)
from workers.topics import ensure_topics, topic_specs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

COMMAND_PARTITIONS = 6


@dataclass(slots=True)
class Pipeline:
    """Everything a test needs of a running pipeline."""

    database: Any  # testkit.plugin.IsolatedDatabase
    prefix: str
    bootstrap: str
    env: dict[str, str]
    workers: list[ManagedProcess]
    relay: ManagedProcess
    producer: AIOKafkaProducer
    results: ResultCollector
    log_dir: Path
    extra: list[ManagedProcess] = field(default_factory=list)

    @property
    def worker(self) -> ManagedProcess:
        return self.workers[0]

    def start(self, *args: str) -> ManagedProcess:
        """Another `ledgerflow ARGS` process on this pipeline (stopped with it)."""
        process = start_process(list(args), self.env, self.log_dir)
        self.extra.append(process)
        return process


async def fund_wallets(p: Pipeline, wallets: int, amount: int) -> list[Any]:
    """Open and fund wallets directly in the ledger (a test's setup, not under test); their
    result events go through the pipeline's outbox like any other."""
    pool = await create_pool(p.database.app_url, size_max=1)
    try:
        people = [onboarding() for _ in range(wallets)]
        writer = LedgerWriter(pool, {"basic": TierLimits()}, topic_prefix=p.prefix)
        await apply_all(writer, *people)
        await apply_all(writer, *[cashin(wallet_of(x), amount) for x in people])
    finally:
        await pool.close()
    return [wallet_of(x) for x in people]


@asynccontextmanager
async def running_pipeline(
    postgres: Any,
    kafka: Any,
    template: str,
    log_dir: Path,
    *,
    workers: int = 1,
    worker_args: tuple[str, ...] = ("worker", "all"),
    **settings: str,
) -> AsyncIterator[Pipeline]:
    """A database and topics of its own, `workers` worker processes and one relay."""
    db = await create_test_database(postgres, template)
    prefix = unique_prefix()
    processes: list[ManagedProcess] = []
    try:
        await ensure_topics(
            kafka.bootstrap_servers,
            topic_specs(prefix, COMMAND_PARTITIONS, COMMAND_PARTITIONS, 1),
            replication_factor=1,
        )
        # Unsigned commands unless the test passes an issuer's settings (cli.identity.Issuer).
        env = ledgerflow_env(
            db.app_url, kafka.bootstrap_servers, prefix, **({"auth_mode": "off"} | settings)
        )
        processes.extend(start_process(list(worker_args), env, log_dir) for _ in range(workers))
        relay = start_process(["relay"], env, log_dir)
        processes.append(relay)
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=True
        )
        await producer.start()
        results = ResultCollector(kafka.bootstrap_servers, prefix)
        try:
            await results.start()
            pipeline = Pipeline(
                db,
                prefix,
                kafka.bootstrap_servers,
                env,
                processes[:-1],
                relay,
                producer,
                results,
                log_dir,
            )
            try:
                yield pipeline
            finally:
                processes.extend(pipeline.extra)
        finally:
            await results.stop()
            await producer.stop()
    finally:
        for process in processes:
            process.stop()
        await drop_test_database(postgres, db.name)
        with contextlib.suppress(Exception):
            await delete_topics_with_prefix(kafka.bootstrap_servers, prefix)


__all__ = [
    "ManagedProcess",
    "Pipeline",
    "ResultCollector",
    "event_id_of",
    "free_port",
    "fund_wallets",
    "ledgerflow_env",
    "publish",
    "running_pipeline",
    "start_process",
]
