"""A fault of the database is never the command's: commands wait, readiness goes false, and
every one completes once the fault is repaired (DESIGN §7). Nothing is dead-lettered or
rejected meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from ledgerflow.cli.dlq_cmd import read_dead_letters
from ledgerflow.contracts.topics import FLOWS, TRANSFER
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.testkit.commands import transfer
from ledgerflow.testkit.pipeline import fund_wallets, publish, running_pipeline
from ledgerflow.testkit.plugin import wait_until

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ledgerflow.testkit.pipeline import Pipeline

pytestmark = pytest.mark.integration

LOAD_INTERVAL_S = 0.02  # ~50 transfers/s while the fault lasts
FAULT_TRANSFERS_MIN = 40
WAIT_S = 60.0


def _failures(p: Pipeline, error_class: str) -> float:
    _, text = p.worker.get("/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ledgerflow_batch_failures_total{") and error_class in line:
            total += float(line.rpartition(" ")[2])
    return total


async def _fault_under_load(
    p: Pipeline,
    break_it: Callable[[asyncpg.Connection], Awaitable[None]],
    repair: Callable[[asyncpg.Connection], Awaitable[None]],
    error_class: str,
) -> None:
    a, b = await fund_wallets(p, 2, 1_000_000)
    keys: list[str] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            command = transfer(a, b, 7)
            await publish(p.producer, command, TRANSFER, p.prefix)
            keys.append(str(command.transfer_id))
            await asyncio.sleep(LOAD_INTERVAL_S)  # pacing the load, not synchronising

    admin = await asyncpg.connect(p.database.owner_url)
    try:
        await break_it(admin)
        task = asyncio.create_task(load())
        try:
            await wait_until(
                lambda: _failures(p, error_class) >= 3 and len(keys) >= FAULT_TRANSFERS_MIN,
                timeout_s=WAIT_S,
                message=f"batches failing with {error_class}",
            )
            status, body = p.worker.get("/readyz")
            assert status == 503, body
            assert "batches are failing" in body, body
            # Nothing answered for the commands sent during the fault: they wait.
            answered = [k for k in keys if k in p.results.by_command_key]
            assert len(answered) < len(keys)
        finally:
            await repair(admin)
            healed_at = time.monotonic()
            stop.set()
            await task
        for key in keys:
            [event] = await p.results.wait_for_key(key, timeout_s=WAIT_S)
            assert event["type"] == "transfer.completed", event
        print(
            f"{error_class}: {len(keys)} transfers waited through the fault, all completed "
            f"{time.monotonic() - healed_at:.2f} s after the repair"
        )
        await wait_until(lambda: p.worker.get("/readyz")[0] == 200, timeout_s=WAIT_S)
        assert all(check.ok for check in await run_audit(admin))
    finally:
        await admin.close()
    letters = await read_dead_letters(
        p.bootstrap, [p.prefix + flow.dlq_topic for flow in FLOWS], limit=10
    )
    assert letters == []
    balance = await _balance(p, a)
    assert balance == 1_000_000 - 7 * len(keys)


async def _balance(p: Pipeline, account: Any) -> int:
    conn = await asyncpg.connect(p.database.owner_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT balance FROM balances WHERE account_id = $1 AND shard = 0", account
            )
        )
    finally:
        await conn.close()


async def test_outbox_insert_revoked_under_load_waits_and_then_completes(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    async def revoke(conn: asyncpg.Connection) -> None:
        await conn.execute("REVOKE INSERT ON outbox FROM ledgerflow_app")

    async def grant(conn: asyncpg.Connection) -> None:
        await conn.execute("GRANT INSERT ON outbox TO ledgerflow_app")

    async with running_pipeline(postgres, kafka, ledgerflow_db_template, tmp_path) as p:
        await _fault_under_load(p, revoke, grant, "InsufficientPrivilegeError")


async def test_a_table_renamed_under_load_waits_and_then_completes(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path: Any
) -> None:
    """As during a rolling upgrade whose migration moved a table the running workers use."""

    async def rename(conn: asyncpg.Connection) -> None:
        await conn.execute("ALTER TABLE idempotency_records RENAME TO idempotency_records_moved")

    async def restore(conn: asyncpg.Connection) -> None:
        with contextlib.suppress(asyncpg.UndefinedTableError):
            await conn.execute(
                "ALTER TABLE idempotency_records_moved RENAME TO idempotency_records"
            )

    async with running_pipeline(postgres, kafka, ledgerflow_db_template, tmp_path) as p:
        await _fault_under_load(p, rename, restore, "UndefinedTableError")
