"""The read API's role can read the ledger and nothing else (docs/decisions/read-side.md)."""

from __future__ import annotations

import asyncpg
import pytest

from ledgerflow.testkit.plugin import IsolatedDatabase

pytestmark = pytest.mark.integration


async def test_the_reader_reads_the_ledger_but_no_personal_data_and_writes_nothing(
    database: IsolatedDatabase,
) -> None:
    conn = await asyncpg.connect(database.reader_url)
    try:
        for table in ("accounts", "balances", "journal_entries", "postings", "tier_limits"):
            await conn.fetch(f"SELECT * FROM {table} LIMIT 1")
        await conn.fetch("SELECT id, tier, kind, subject FROM customers LIMIT 1")
        await conn.fetch("SELECT flow, key, result_payload, subject FROM idempotency_records")
        refused = [
            "SELECT * FROM customer_pii",
            "SELECT content_hash FROM idempotency_records",
            "SELECT * FROM outbox",
            "INSERT INTO tier_limits VALUES ('basic', 'USD', 1, 1, 1, 1)",
            "UPDATE balances SET balance = balance + 1",
            "DELETE FROM accounts",
        ]
        for statement in refused:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
