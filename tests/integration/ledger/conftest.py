"""A LedgerWriter on a fresh, migrated database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from ledgerflow.ledger_db.apply import LedgerWriter
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool

LIMITS = {"basic": TierLimits(single_amount_max=1_000_000, balance_max=5_000_000)}

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database: Any) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database.app_url, size_max=8)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def writer(pool: asyncpg.Pool) -> LedgerWriter:
    return LedgerWriter(pool, LIMITS)
