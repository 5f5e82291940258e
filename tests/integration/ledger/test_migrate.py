"""Migrations: idempotent, and safe from two processes at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from ledger_db.migrate import migrate

pytestmark = pytest.mark.integration


async def test_migrate_twice_and_concurrently(database: Any) -> None:
    admin = await asyncpg.connect(database.admin_url)
    name = f"lf_migrate_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" OWNER ledgerflow_owner')
    try:
        dsn = database.owner_url.rsplit("/", 1)[0] + f"/{name}"
        first, second = await asyncio.gather(migrate(dsn), migrate(dsn))
        assert sorted([first, second], key=len) == [[], ["0001_ledger", "0002_identity_and_limits"]]
        assert await migrate(dsn) == []
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
