"""The writers' pool: releasing a connection costs no statement (nothing pooled keeps session
state), and a transaction left open is still rolled back before the connection is reused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
import pytest_asyncio

from ledgerflow.ledger_db.unit_of_work import create_pool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def pool_of_one(database: Any) -> AsyncIterator[asyncpg.Pool]:
    """One connection: what is released is what the next acquire gets."""
    pool = await create_pool(database.app_url, size_max=1)
    yield pool
    await pool.close()


async def last_statement(database: Any, pid: int) -> str:
    conn = await asyncpg.connect(database.app_url)
    try:
        return str(await conn.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid))
    finally:
        await conn.close()


async def test_a_released_connection_runs_no_reset_statement(
    pool_of_one: asyncpg.Pool, database: Any
) -> None:
    async with pool_of_one.acquire() as conn:
        pid = conn.get_server_pid()
        async with conn.transaction():
            await conn.execute("SELECT 'the last work of the batch'")
    # asyncpg's default reset would have run `SELECT pg_advisory_unlock_all(); CLOSE ALL;
    # UNLISTEN *; RESET ALL;` here: a round trip per batch.
    assert await last_statement(database, pid) == "COMMIT;"


async def test_a_transaction_left_open_is_rolled_back_on_release(
    pool_of_one: asyncpg.Pool,
) -> None:
    async with pool_of_one.acquire() as conn:
        left_open = conn.transaction()
        await left_open.start()
        await conn.execute("CREATE TEMP TABLE left_behind (n int) ON COMMIT DROP")
        await conn.execute("SET LOCAL lock_timeout = '1ms'")
    async with pool_of_one.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT to_regclass('pg_temp.left_behind')") is None
        assert await conn.fetchval("SHOW lock_timeout") == "5s"
