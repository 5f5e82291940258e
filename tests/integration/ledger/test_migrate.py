"""Migrations: idempotent, and safe from two processes at once."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from ledgerflow.ledger_db.migrate import MIGRATIONS_DIR, load_migrations, migrate

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


async def test_migrate_twice_and_concurrently(database: Any) -> None:
    admin = await asyncpg.connect(database.admin_url)
    name = f"lf_migrate_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" OWNER ledgerflow_owner')
    try:
        dsn = database.owner_url.rsplit("/", 1)[0] + f"/{name}"
        first, second = await asyncio.gather(migrate(dsn), migrate(dsn))
        assert sorted([first, second], key=len) == [[], [m.version for m in load_migrations()]]
        assert await migrate(dsn) == []
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_outgoing_totals_move_onto_the_balance_rows(database: Any, tmp_path: Path) -> None:
    """0003 carries each wallet's latest day and that day's month over from wallet_outgoing."""
    for version in ("0001_ledger", "0002_identity_and_limits"):
        shutil.copy(MIGRATIONS_DIR / f"{version}.sql", tmp_path)
    admin = await asyncpg.connect(database.admin_url)
    name = f"lf_migrate_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" OWNER ledgerflow_owner')
    try:
        dsn = database.owner_url.rsplit("/", 1)[0] + f"/{name}"
        await migrate(dsn, tmp_path)
        customer, wallet, idle = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("INSERT INTO customers (id) VALUES ($1)", customer)
            for account in (wallet, idle):
                await conn.execute(
                    "INSERT INTO accounts (id, kind, currency, customer_id)"
                    " VALUES ($1, 'wallet', 'EUR', $2)",
                    account,
                    customer,
                )
                await conn.execute(
                    "INSERT INTO balances (account_id, kind, shard) VALUES ($1, 'wallet', 0)",
                    account,
                )
            await conn.execute(
                "INSERT INTO wallet_outgoing (account_id, day, total) VALUES"
                " ($1, '2026-10-30', 500), ($1, '2026-11-02', 70), ($1, '2026-11-03', 30)",
                wallet,
            )
            # ... and the later ones after it.
            assert (await migrate(dsn))[0] == "0003_outgoing_on_balances"
            rows = {
                r["account_id"]: tuple(r.values())[1:]
                for r in await conn.fetch(
                    "SELECT account_id, out_day::text, out_day_total, out_month::text,"
                    " out_month_total FROM balances"
                )
            }
            assert rows == {
                wallet: ("2026-11-03", 30, "2026-11-01", 100),
                idle: (None, 0, None, 0),
            }
            assert await conn.fetchval("SELECT to_regclass('wallet_outgoing')") is None
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
