"""The benchmarks make databases of their own: tests of them need an owner that may."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import pytest_asyncio


@pytest_asyncio.fixture(loop_scope="session")
async def creates_databases(database: Any) -> Any:
    """The test database, skipping the test where its owner role may not create databases."""
    owner = await asyncpg.connect(database.owner_url)
    try:
        if not await owner.fetchval(
            "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ):
            pytest.skip("the owner role may not create databases on this server")
    finally:
        await owner.close()
    return database
