"""A writer frozen in the middle of a COPY keeps its wallet rows locked, and PostgreSQL has no
timeout for that state (not idle in transaction; a statement_timeout is not acted on while the
server waits for COPY data). The next writer whose lock wait times out ends it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from ledgerflow.ledger_db.apply import LedgerWriter, OutcomeKind
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.sql import LOCK_WALLETS
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import apply_all, cashin, cashout, onboarding, wallet_of
from ledgerflow.testkit.plugin import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.integration

SILENCE_MS = 1_000  # idle_in_transaction_session_timeout: how long a writer may be silent
LOCK_TIMEOUT_MS = 300
BOUND_S = 15.0


async def test_a_writer_frozen_mid_copy_is_ended_by_the_next_one(database: Any) -> None:
    pool = await create_pool(
        database.app_url,
        size_max=4,
        lock_timeout_ms=LOCK_TIMEOUT_MS,
        idle_in_transaction_timeout_ms=SILENCE_MS,
    )
    frozen = await pool.acquire()
    forever = asyncio.Event()
    try:
        writer = LedgerWriter(pool, {"basic": TierLimits()})
        person = onboarding()
        w = wallet_of(person)
        await apply_all(writer, person, cashin(w, 1_000))

        # The frozen writer: wallet row locked, then a COPY whose rows never come.
        transaction = frozen.transaction()
        await transaction.start()
        await frozen.fetch(LOCK_WALLETS, str(w), None, str(w))

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            await forever.wait()
            yield ()

        copy = asyncio.ensure_future(frozen.copy_records_to_table("outbox", records=rows()))
        pid = frozen.get_server_pid()
        admin = await asyncpg.connect(database.admin_url)
        try:

            async def in_copy() -> bool:
                return await _state(admin, pid) == ("active", "ClientRead")

            await wait_until(in_copy, timeout_s=5, message="the frozen writer is in its COPY")
            started = time.monotonic()
            [outcome] = await apply_all(writer, cashout(w, 300))
            took = time.monotonic() - started

            assert outcome.kind is OutcomeKind.COMPLETED
            assert writer.retry_stats.stuck_sessions_ended == 1
            assert writer.retry_stats.by_cause["lock_timeout"] >= 1
            assert SILENCE_MS / 1000 <= took < BOUND_S
            assert await _state(admin, pid) is None  # its session is gone, its writes with it
        finally:
            await admin.close()
        balance = await pool.fetchval("SELECT balance FROM balances WHERE account_id = $1", w)
        assert balance == 700
    finally:
        forever.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(copy, 5)
        await pool.release(frozen)
        await pool.close()


async def _state(admin: asyncpg.Connection, pid: int) -> tuple[str, str] | None:
    row = await admin.fetchrow("SELECT state, wait_event FROM pg_stat_activity WHERE pid = $1", pid)
    return None if row is None else (row["state"], row["wait_event"])
