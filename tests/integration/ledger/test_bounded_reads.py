"""The database's double-entry check and the relay's prune read the rows a statement names, by
key, never a whole table: their cost follows the batch, not the size of the journal, the
accounts or the outbox. Counted with pg_stat_xact_user_tables (the scans of the transaction so
far) on ledgers of thousands of wallets, analyzed as production tables are."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from ledgerflow.ledger_db.outbox import prune_published
from ledgerflow.testkit.commands import open_funded_wallets
from ledgerflow.workers.relay import PRUNE_ROWS_PER_STATEMENT

if TYPE_CHECKING:
    from ledgerflow.ledger_db.apply import LedgerWriter

pytestmark = pytest.mark.integration

WALLETS = 10_000  # tables as large as the benchmarks', where the old check read them through
OUTBOX_WALLETS = 3_000  # their 6,000 events: the old prune read them all for 1,000
ENTRIES = 39  # 78 postings: a batch at 1,000/s offered
WEEK_S = 7 * 24 * 3600.0


async def populated(writer: LedgerWriter, database: Any, wallets: int) -> list[uuid.UUID]:
    """Funded wallets (their accounts, cash-in entries and result events), analyzed."""
    ids = await open_funded_wallets(writer, wallets, 1_000)
    owner = await asyncpg.connect(database.owner_url)
    try:
        await owner.execute("ANALYZE accounts, journal_entries, postings, outbox")
    finally:
        await owner.close()
    return ids


async def seq_scans(conn: asyncpg.Connection, *tables: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE relname = ANY($1::text[])",
        list(tables),
    )
    return {name: next((r["seq_scan"] for r in rows if r["relname"] == name), 0) for name in tables}


async def post_pairs(
    conn: asyncpg.Connection, pairs: list[tuple[uuid.UUID, uuid.UUID]]
) -> dict[str, int]:
    """One journal entry per pair (1 EUR from the first to the second), all postings in one
    statement as one chunk's COPY is; the tables the check read through meanwhile."""
    entries = [uuid.uuid4() for _ in pairs]
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO journal_entries (id, flow, idempotency_key) "
            "SELECT e, 'transfer', gen_random_uuid() FROM unnest($1::uuid[]) AS e",
            entries,
        )
        before = await seq_scans(conn, "journal_entries", "accounts")
        await conn.execute(
            "INSERT INTO postings (entry_id, seq, account_id, currency, amount) "
            "SELECT e, s, a, 'EUR', m FROM unnest($1::uuid[], $2::smallint[], $3::uuid[], "
            "$4::bigint[]) AS p(e, s, a, m)",
            [e for e in entries for _ in range(2)],
            [0, 1] * len(pairs),
            [account for pair in pairs for account in pair],
            [-1, 1] * len(pairs),
        )
        after = await seq_scans(conn, "journal_entries", "accounts")
        posted = await conn.fetchval(
            "SELECT count(*) FROM postings WHERE entry_id = ANY($1::uuid[])", entries
        )
    assert posted == 2 * len(pairs)
    return {table: after[table] - before[table] for table in after}


async def test_the_double_entry_check_probes_the_entries_and_accounts_it_names(
    writer: LedgerWriter, database: Any
) -> None:
    """At this size, with LIMIT 1 and a filter it expected every row to pass, the planner
    chose to stream both tables through a hash of the statement's rows for the old check."""
    wallets = await populated(writer, database, WALLETS)
    pairs = list(zip(wallets[0::2], wallets[1::2], strict=True))
    conn = await asyncpg.connect(database.app_url)
    try:
        read_through = await post_pairs(conn, pairs[:ENTRIES])
    finally:
        await conn.close()
    assert read_through == {"journal_entries": 0, "accounts": 0}


async def test_a_prune_step_reads_its_head_of_the_outbox_only(
    writer: LedgerWriter, database: Any
) -> None:
    await populated(writer, database, OUTBOX_WALLETS)
    conn = await asyncpg.connect(database.app_url)
    try:
        # Every event published just now: a sweep finds nothing a week old.
        await conn.execute("UPDATE outbox SET published_at = statement_timestamp()")
        outbox = await conn.fetchval("SELECT count(*) FROM outbox")
        assert outbox >= 2 * OUTBOX_WALLETS
        async with conn.transaction():
            before = await seq_scans(conn, "outbox")
            step = await prune_published(conn, 0, PRUNE_ROWS_PER_STATEMENT, WEEK_S)
            after = await seq_scans(conn, "outbox")
    finally:
        await conn.close()
    assert (step.deleted, step.examined) == (0, PRUNE_ROWS_PER_STATEMENT)
    assert after == before, f"the prune read the outbox through: {before} -> {after}"
