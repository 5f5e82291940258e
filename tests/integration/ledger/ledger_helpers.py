"""Helpers shared by the ledger's integration tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class HeldWallet:
    """Another transaction holding a wallet's balance row, as a concurrent batch would."""

    waiting: Callable[[], Awaitable[int]]  # sessions of the test database waiting on a lock
    release: Callable[[], Awaitable[None]]  # ends the holding transaction


@asynccontextmanager
async def wallet_held(database: Any, wallet: uuid.UUID) -> AsyncIterator[HeldWallet]:
    """Lock `wallet`'s row from another session until `release` (or the block's end)."""
    holder = await asyncpg.connect(database.app_url)
    admin = await asyncpg.connect(database.admin_url)
    try:

        async def waiting() -> int:
            return int(
                await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )

        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE", wallet)
        yield HeldWallet(waiting, transaction.commit)
    finally:
        await admin.close()
        await holder.close()
