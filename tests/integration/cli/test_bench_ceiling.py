"""`ledgerflow bench ceiling`: the set-based SQL yardstick writes a ledger as valid as the real
path's, under the same schema, its triggers and constraints (the audit says so), and the real
path carries on after it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import orjson
import pytest

from ledgerflow.cli.bench_ceiling import ceiling_for, measure_ceiling
from ledgerflow.ledger_db.apply import LedgerWriter, OutcomeKind
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import apply_all, open_funded_wallets, transfer

pytestmark = pytest.mark.integration

FUNDS = 1_000_000


async def funded_wallets(app_url: str, n: int, funds: int = FUNDS) -> list[uuid.UUID]:
    """Open and fund `n` wallets through the real LedgerWriter, with one real transfer too."""
    pool = await create_pool(app_url, size_max=1)
    try:
        writer = LedgerWriter(pool, {"basic": TierLimits()})
        ids = await open_funded_wallets(writer, n, funds)
        await apply_all(writer, transfer(ids[0], ids[1], 1))
        return ids
    finally:
        await pool.close()


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {
        table: await conn.fetchval(f"SELECT count(*) FROM {table}")
        for table in ("journal_entries", "postings", "idempotency_records", "outbox")
    }


async def assert_audit_passes(conn: asyncpg.Connection) -> None:
    failed = [(r.name, r.examples) for r in await run_audit(conn) if not r.ok]
    assert failed == [], failed


async def test_ceiling_writes_what_the_audit_passes(database: Any) -> None:
    ids = await funded_wallets(database.app_url, 100)
    conn = await asyncpg.connect(database.admin_url)
    try:
        before = await counts(conn)
        result = await measure_ceiling(database.app_url, ids, transfers=2_000, batch=500)
        assert (result.transfers, result.batch, result.batches) == (2_000, 500, 4)
        assert result.seconds > 0
        assert result.per_s > 0
        after = await counts(conn)
        added = {table: after[table] - before[table] for table in after}
        assert added == {
            "journal_entries": 2_000,
            "postings": 4_000,
            "idempotency_records": 2_000,
            "outbox": 2_000,
        }

        # Every wallet's balance is the sum of its postings; nothing was created or lost.
        wrong = await conn.fetch(
            """
            SELECT b.account_id, b.balance, coalesce(sum(p.amount), 0) AS postings
            FROM balances b LEFT JOIN postings p ON p.account_id = b.account_id
            WHERE b.kind = 'wallet'
            GROUP BY b.account_id, b.balance
            HAVING b.balance <> coalesce(sum(p.amount), 0)
            """
        )
        assert wrong == []
        total = await conn.fetchval(
            "SELECT sum(balance) FROM balances WHERE account_id = ANY($1::uuid[])", ids
        )
        assert total == 100 * FUNDS
        # Each result is the real path's: its sender's balance_after is the posting's, which
        # PostgreSQL worked out; the outbox row is the record's, keyed by the sender.
        mismatched = await conn.fetchval(
            """
            SELECT count(*) FROM idempotency_records r
            JOIN postings p ON p.entry_id = r.journal_entry_id AND p.seq = 0
            JOIN outbox o ON o.event_id = r.result_event_id
            WHERE r.flow = 'transfer'
              AND ((convert_from(r.result_payload, 'UTF8')::jsonb -> 'data' ->> 'balance_after')
                       ::bigint IS DISTINCT FROM p.balance_after
                   OR o.key <> convert_to(p.account_id::text, 'UTF8')
                   OR o.payload <> r.result_payload OR o.topic <> r.result_topic)
            """
        )
        assert mismatched == 0
        assert await conn.fetchval("SELECT min(length(payload)) FROM outbox") > 400
        await assert_audit_passes(conn)

        # The helper bench ledger and bench e2e call: warmed up, then measured, same tables.
        per_s = await ceiling_for(database.app_url, ids, 600, 200)
        assert per_s > 0
        assert await conn.fetchval("SELECT count(*) FROM journal_entries") == (
            after["journal_entries"] + 600 + 600
        )

        # The real path carries on after it: its postings come later in each wallet's history.
        pool = await create_pool(database.app_url, size_max=1)
        try:
            writer = LedgerWriter(pool, {"basic": TierLimits()})
            outcomes = await apply_all(
                writer, transfer(ids[2], ids[3], 7), transfer(ids[3], ids[2], 5)
            )
            assert [o.kind for o in outcomes] == [OutcomeKind.COMPLETED] * 2
        finally:
            await pool.close()
        await assert_audit_passes(conn)
    finally:
        await conn.close()


async def test_ceiling_refuses_what_would_not_be_valid(database: Any) -> None:
    ids = await funded_wallets(database.app_url, 4, funds=50)
    with pytest.raises(ValueError, match="short of funds"):
        await measure_ceiling(database.app_url, ids, transfers=2_000, batch=500)
    with pytest.raises(ValueError, match="do not exist"):
        await measure_ceiling(database.app_url, [*ids, uuid.uuid4()], transfers=10, batch=5)
    with pytest.raises(ValueError, match="two wallets"):
        await measure_ceiling(database.app_url, ids[:1], transfers=10, batch=5)
    conn = await asyncpg.connect(database.admin_url)
    try:
        # Refused before the clock: nothing was written.
        assert await conn.fetchval("SELECT count(*) FROM journal_entries") == 4 + 1
        await assert_audit_passes(conn)
    finally:
        await conn.close()


async def test_ceiling_command_measures_on_its_own_database_and_drops_it(
    creates_databases: Any,
) -> None:
    name = f"ledgerflow_bench_ceiling_{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")} | {
        "LEDGERFLOW_DATABASE_URL": creates_databases.app_url,
        "LEDGERFLOW_MIGRATION_DATABASE_URL": creates_databases.owner_url,
    }
    command = "import typer; from ledgerflow.cli.bench_ceiling import ceiling; typer.run(ceiling)"
    args = ["--transfers", "400", "--batch", "100", "--wallets", "20", "--json"]
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", command, *args, "--database", name],
        env=env,
        capture_output=True,
        check=False,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr.decode()
    out = orjson.loads(done.stdout)
    assert out["ceiling_per_s"] > 0
    assert (out["transfers"], out["batch"], out["batches"], out["wallets"]) == (400, 100, 4, 20)
    assert "cores" in out["machine"]
    admin = await asyncpg.connect(creates_databases.admin_url)
    try:
        assert (
            await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) == 0
        )
    finally:
        await admin.close()
