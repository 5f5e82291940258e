"""The `postgres` and `database` fixtures: real round trips, roles, and per-test isolation."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from ledgerflow.testkit.plugin import IsolatedDatabase, PostgresServer, template_name

pytestmark = pytest.mark.integration

# The isolation pair below hands the first test's database name to the second.
_seen: dict[str, str] = {}


async def test_asyncpg_round_trip(database: IsolatedDatabase) -> None:
    conn = await asyncpg.connect(database.owner_url)
    try:
        await conn.execute("CREATE TABLE round_trip (id uuid PRIMARY KEY, amount bigint NOT NULL)")
        row_id = uuid.uuid4()
        await conn.execute("INSERT INTO round_trip VALUES ($1, $2)", row_id, 10**15)
        row = await conn.fetchrow("SELECT id, amount FROM round_trip")
    finally:
        await conn.close()
    assert row is not None
    assert (row["id"], row["amount"]) == (row_id, 10**15)


async def test_roles_and_ownership(database: IsolatedDatabase) -> None:
    """The owner role owns the database; the app role logs in but owns nothing."""
    conn = await asyncpg.connect(database.app_url)
    try:
        who, db, owner = await conn.fetchrow(
            "SELECT current_user, current_database(), datdba::regrole::text "
            "FROM pg_database WHERE datname = current_database()"
        )
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
            "WHERE r.rolname = 'ledgerflow_app'"
        )
    finally:
        await conn.close()
    assert (who, db, owner) == ("ledgerflow_app", database.name, "ledgerflow_owner")
    assert owned == 0


async def test_isolation_first_writes(database: IsolatedDatabase) -> None:
    conn = await asyncpg.connect(database.owner_url)
    try:
        await conn.execute("CREATE TABLE isolation_probe (marker text)")
        await conn.execute("INSERT INTO isolation_probe VALUES ('written by the first test')")
    finally:
        await conn.close()
    _seen["first"] = database.name


async def test_isolation_second_sees_nothing(
    database: IsolatedDatabase, postgres: PostgresServer
) -> None:
    conn = await asyncpg.connect(database.owner_url)
    try:
        probe = await conn.fetchval("SELECT to_regclass('isolation_probe')")
    finally:
        await conn.close()
    assert probe is None, "a table from another test's database is visible"
    first = _seen.get("first")
    if first is not None:  # run together with the first test: its database is already gone
        assert first != database.name
        admin = await asyncpg.connect(postgres.admin_url)
        try:
            assert (
                await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", first) is None
            )
        finally:
            await admin.close()


async def test_template_is_reused_and_idle(
    database: IsolatedDatabase, postgres: PostgresServer, ledgerflow_db_template: str
) -> None:
    """One finished template per migration set; nobody may connect to it (clones need it idle)."""
    assert ledgerflow_db_template == template_name()
    admin = await asyncpg.connect(postgres.admin_url)
    try:
        row = await admin.fetchrow(
            "SELECT datistemplate, datallowconn, datdba::regrole::text AS owner "
            "FROM pg_database WHERE datname = $1",
            ledgerflow_db_template,
        )
    finally:
        await admin.close()
    assert row is not None
    assert (row["datistemplate"], row["datallowconn"], row["owner"]) == (
        True,
        False,
        "ledgerflow_owner",
    )


async def test_embedded_stack_keeps_durability(postgres: PostgresServer) -> None:
    """Benchmarks run on this cluster: it must not trade durability for speed."""
    if postgres.source != "embedded":
        pytest.skip(f"durability settings are ours only on the embedded stack ({postgres.source})")
    admin = await asyncpg.connect(postgres.admin_url)
    try:
        settings = {
            name: await admin.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "full_page_writes", "listen_addresses")
        }
    finally:
        await admin.close()
    assert settings == {
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "listen_addresses": "127.0.0.1",
    }
