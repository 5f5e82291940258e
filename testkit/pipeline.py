"""Run Ledgerflow's processes against a test stack and await their answers.

The `ledgerflow_pipeline` fixture (testkit.plugin) is one of these, signed:

    event = await p.send(transfer(wallet_of(alice), wallet_of(bob), 1_250))

`running_pipeline(...)` gives the same with every setting under the test's control.
"""

from __future__ import annotations

import contextlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from aiokafka import AIOKafkaProducer

from ledgerflow.harness.identity import Issuer, Signer
from ledgerflow.harness.processes import ManagedProcess, free_port, ledgerflow_env, start_process
from ledgerflow.harness.results import ResultCollector, event_id_of, publish
from ledgerflow.ledger_db.apply import LedgerWriter
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import apply_all, cashin, flow_of, onboarding, wallet_of
from ledgerflow.testkit.plugin import (
    create_test_database,
    delete_topics_with_prefix,
    drop_test_database,
    unique_prefix,
)
from ledgerflow.workers.kafka_io import idempotent_producer
from ledgerflow.workers.topics import ensure_topics, topic_specs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from pydantic import BaseModel

COMMAND_PARTITIONS = 6
SEND_TIMEOUT_S = 30.0
API_TIMEOUT_S = 10.0


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
    # Signs every command `send` publishes (None: the workers run with auth off).
    signer: Signer | None = None
    # `ledgerflow api` on the pipeline's database, when it was asked for.
    api: ManagedProcess | None = None

    async def get(
        self,
        path: str,
        *,
        as_subject: str | None = None,
        scope: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """GET `path` from the read API, as `as_subject` (with `scope`), or unauthenticated
        when neither is given. Signed by the pipeline's identity provider."""
        assert self.api is not None, "running_pipeline(api=True) starts the read API"
        sent = dict(headers or {})
        if self.signer is not None and (as_subject is not None or scope is not None):
            subject = as_subject or "ledgerflow-reader"
            sent["authorization"] = self.signer.issuer.bearer(subject, scope=scope)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api.port}") as client:
            return await client.get(path, headers=sent, params=params, timeout=API_TIMEOUT_S)

    @property
    def worker(self) -> ManagedProcess:
        return self.workers[0]

    async def send(
        self,
        command: BaseModel,
        *,
        as_subject: str | None = None,
        timeout_s: float = SEND_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Publish `command` to its topic as the API layer would (signed when auth is on) and
        return the result event that answers it, awaited by idempotency key: sending the same
        command again returns its replay. `as_subject` signs as someone else."""
        flow = flow_of(command)
        key = str(getattr(command, flow.id_field))
        answered = len(self.results.by_command_key.get(key, ()))
        authorization = None
        if self.signer is not None:
            authorization = self.signer.authorization(command, as_subject)
        await publish(self.producer, command, flow, self.prefix, authorization=authorization)
        try:
            events = await self.results.wait_for_key(key, timeout_s, count=answered + 1)
        except TimeoutError:
            raise TimeoutError(
                f"no answer to {flow.name} command {key} within {timeout_s} s "
                f"(process logs in {self.log_dir})"
            ) from None
        return events[answered]

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
    signed: bool = False,
    api: bool = False,
    **settings: str,
) -> AsyncIterator[Pipeline]:
    """A database and topics of its own, `workers` worker processes and one relay, and the read
    API if `api`. `signed`: authentication required, trusting an issuer of the pipeline's own
    that signs `send`."""
    db = await create_test_database(postgres, template)
    prefix = unique_prefix()
    processes: list[ManagedProcess] = []
    try:
        await ensure_topics(
            kafka.bootstrap_servers,
            topic_specs(prefix, COMMAND_PARTITIONS, COMMAND_PARTITIONS, 1),
            replication_factor=1,
        )
        # Unsigned commands unless signed, or the test passes an issuer's settings itself.
        signer = Signer(Issuer()) if signed else None
        trusted = {"auth_mode": "off"}
        if signer is not None:
            trusted = signer.issuer.settings(log_dir / "jwks.json")
        env = ledgerflow_env(
            db.app_url,
            kafka.bootstrap_servers,
            prefix,
            **({"read_database_url": db.reader_url} | trusted | settings),
        )
        processes.extend(start_process(list(worker_args), env, log_dir) for _ in range(workers))
        worker_processes = list(processes)
        relay = start_process(["relay"], env, log_dir)
        processes.append(relay)
        reader = start_process(["api"], env, log_dir) if api else None
        if reader is not None:
            processes.append(reader)
        producer = idempotent_producer(kafka.bootstrap_servers, "ledgerflow-testkit")
        await producer.start()
        results = ResultCollector(kafka.bootstrap_servers, prefix)
        try:
            await results.start()
            pipeline = Pipeline(
                db,
                prefix,
                kafka.bootstrap_servers,
                env,
                worker_processes,
                relay,
                producer,
                results,
                log_dir,
                signer=signer,
                api=reader,
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
