"""Two workers share a group; a stopped relay loses nothing and keeps per-key order."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

from ledgerflow.contracts.topics import ONBOARDING, TRANSFER
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.ledger_db.outbox import pending_stats
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import transfer
from ledgerflow.testkit.pipeline import fund_wallets, publish, running_pipeline
from ledgerflow.testkit.plugin import wait_until

pytestmark = pytest.mark.integration


def assigned(worker: Any) -> int:
    _, text = worker.get("/readyz")  # readiness refreshes the gauge
    _, text = worker.get("/metrics")
    for line in text.splitlines():
        if line.startswith('ledgerflow_assigned_partitions{flow="transfer"}'):
            return int(float(line.split()[-1]))
    return 0


async def test_two_workers_split_the_partitions_and_totals_hold(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    async with running_pipeline(
        postgres,
        kafka,
        ledgerflow_db_template,
        tmp_path,
        workers=2,
        worker_args=("worker", "transfer"),
    ) as p:
        wallets = await fund_wallets(p, 20, 10_000)
        # The group settles to three partitions each (the second join rebalanced the first).
        await wait_until(
            lambda: sorted(assigned(w) for w in p.workers) == [3, 3],
            timeout_s=30,
            message="two workers holding three partitions each",
        )
        rng = random.Random(5)
        sent = []
        for _ in range(400):
            a, b = rng.sample(wallets, 2)
            command = transfer(a, b, rng.randint(1, 300))
            sent.append(command)
            await publish(p.producer, command, TRANSFER, p.prefix)
        for command in sent:
            await p.results.wait_for_key(str(command.transfer_id), timeout_s=60)
        conn = await asyncpg.connect(p.database.app_url)
        try:
            total = await conn.fetchval(
                "SELECT sum(balance) FROM balances WHERE account_id = ANY($1::uuid[])", wallets
            )
            assert total == 20 * 10_000
            assert all(r.ok for r in await run_audit(conn))
        finally:
            await conn.close()
        for worker in p.workers:  # both consumed: each committed batches of its own
            _, metrics = worker.get("/metrics")
            assert 'ledgerflow_commands_total{flow="transfer",outcome="completed"' in metrics


async def test_relay_restart_publishes_everything_in_per_key_order(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    async with running_pipeline(postgres, kafka, ledgerflow_db_template, tmp_path) as p:
        wallets = await fund_wallets(p, 4, 1_000_000)
        p.relay.stop()
        sent: dict[Any, list[str]] = {w: [] for w in wallets}
        for i in range(200):
            a = wallets[i % 4]
            b = wallets[(i + 1) % 4]
            command = transfer(a, b, 1 + i)
            sent[a].append(str(command.transfer_id))
            await publish(p.producer, command, TRANSFER, p.prefix)
        pool = await create_pool(p.database.app_url, size_max=1)
        try:

            async def all_decided() -> bool:
                return (
                    await pool.fetchval(
                        "SELECT count(*) FROM idempotency_records WHERE flow = 'transfer'"
                    )
                    == 200
                )

            await wait_until(all_decided, timeout_s=60, message="worker decided every command")
            pending = await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND topic LIKE $1",
                f"{p.prefix}transfer.%",
            )
            assert pending == 200, "with the relay down, every result waits in the outbox"
            assert not p.results.by_command_key.keys() & {k for ks in sent.values() for k in ks}
            p.start("relay")
            for keys in sent.values():
                for key in keys:
                    await p.results.wait_for_key(key, timeout_s=60)

            async def drained() -> bool:
                async with pool.acquire() as conn:
                    return (await pending_stats(conn))[0] == 0

            await wait_until(drained, timeout_s=30, message="outbox drained")
        finally:
            await pool.close()
        for wallet, keys in sent.items():
            received = [
                e["data"]["transfer_id"]
                for e in p.results.events
                if e["type"] == "transfer.completed" and e["data"]["from_account_id"] == str(wallet)
            ]
            assert received == keys, f"per-key order broken for {wallet}"
        assert ONBOARDING.name == "onboarding"
        await asyncio.sleep(0)
