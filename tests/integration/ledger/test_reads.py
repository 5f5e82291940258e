"""The read side's queries on a ledger written by the writer (ledger_db/reads.py): history
order, balances at an instant, statements, and rows release 0.1 wrote without balance_after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from ledgerflow.ledger_db import reads
from ledgerflow.ledger_db.apply import LedgerWriter
from ledgerflow.testkit.commands import apply_all, cashin, onboarding, transfer, wallet_of

pytestmark = pytest.mark.integration


async def read_all(conn: asyncpg.Connection, wallet: Any, limit: int = 3) -> list[reads.EntryLine]:
    lines: list[reads.EntryLine] = []
    before = None
    while True:
        page = await reads.history(conn, wallet, limit=limit, before=before)
        lines += page.lines
        if page.next_position is None:
            return lines
        before = page.next_position


async def test_history_without_stored_balances_is_summed_and_carried(
    writer: LedgerWriter, database: Any
) -> None:
    """Rows release 0.1 wrote have no balance_after: the read side sums once per page and
    carries the balance along it, to the same answers as stored values give."""
    alice, bob = onboarding(), onboarding()
    await apply_all(writer, alice, bob)
    a, b = wallet_of(alice), wallet_of(bob)
    for amount in (1_000, 250, 40):
        await apply_all(writer, cashin(a, amount))
    await apply_all(writer, transfer(a, b, 300), transfer(b, a, 100))
    conn = await asyncpg.connect(database.reader_url)
    admin = await asyncpg.connect(database.admin_url)
    try:
        stored = await read_all(conn, a)
        assert [line.balance_after for line in stored] == [1_090, 990, 1_290, 1_250, 1_000]
        assert [line.amount for line in stored] == [100, -300, 40, 250, 1_000]
        await admin.execute("SET session_replication_role = replica")
        await admin.execute("UPDATE postings SET balance_after = NULL WHERE account_id = $1", a)
        for limit in (1, 2, 3, 5):
            assert await read_all(conn, a, limit) == stored
        middle = stored[2].created_at
        assert await reads.balance_at(conn, a, middle) == 1_290
        start, end = stored[-1].created_at, stored[0].created_at + timedelta(seconds=1)
        statement = await reads.statement(conn, a, "EUR", start, end)
        assert (statement.opening_balance, statement.closing_balance) == (0, 1_090)
        assert [line.balance_after for line in statement.lines] == [
            line.balance_after for line in reversed(stored)
        ]
    finally:
        await admin.close()
        await conn.close()


async def test_a_clock_that_steps_back_never_reorders_a_wallets_history(
    writer: LedgerWriter, database: Any
) -> None:
    """The second batch's clock is an hour before the first's: its postings still come after
    (posted_at is never earlier than the wallet's last posting), so the chain holds."""
    alice = onboarding()
    await apply_all(writer, alice)
    a = wallet_of(alice)
    late = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    writer.clock = lambda: late
    await apply_all(writer, cashin(a, 500))
    writer.clock = lambda: late - timedelta(hours=1)
    await apply_all(writer, cashin(a, 70))
    conn = await asyncpg.connect(database.reader_url)
    try:
        lines = await read_all(conn, a)
    finally:
        await conn.close()
    assert [(line.amount, line.balance_after) for line in lines] == [(70, 570), (500, 500)]
    assert lines[0].created_at == lines[1].created_at == late
