"""Content hashes at rest are keyed (HMAC-SHA-256), and a retry is still recognised: against rows
keyed from the start, rows written plain before the deployment was keyed, and rows re-keyed by
`ledgerflow migrate`'s data step. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from ledgerflow.ledger_db.apply import LedgerWriter, OutcomeKind
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.ledger_db.content_hash import ContentHashKey, ContentHashKeyError, keying_state
from ledgerflow.ledger_db.migrate import MIGRATIONS_DIR, MigrationError, migrate
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import apply_all, cashin, onboarding, parsed, wallet_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from pydantic import BaseModel

pytestmark = pytest.mark.integration

RECORD = (
    "SELECT content_hash, content_hash_keyed, result_event_id::text AS event_id"
    " FROM idempotency_records WHERE key = $1"
)
UNBOUNDED = {"basic": TierLimits()}
RELEASE_01_MIGRATIONS = ("0001_ledger", "0002_identity_and_limits", "0003_outgoing_on_balances")


def plain(command: BaseModel) -> bytes:
    """What release 0.1 stored: the plain SHA-256 of the canonical data."""
    return parsed(command).content_hash


async def test_a_keyed_deployment_stores_the_hmac_and_a_retry_replays(
    pool: asyncpg.Pool, database: Any
) -> None:
    key = ContentHashKey(os.urandom(32))
    async with pool.acquire() as conn:
        assert not (await keying_state(conn)).keyed, "nothing is keyed until asked"
    await migrate(database.owner_url, content_hash_key=key, key_content_hashes_now=True)
    writer = LedgerWriter(pool, UNBOUNDED, content_hash_key=key)
    person = onboarding()  # name and phone number are in its hash
    deposit = cashin(wallet_of(person), 700)
    first = await apply_all(writer, person, deposit)
    async with pool.acquire() as conn:
        assert (await keying_state(conn)).rekeyed
        for command in (person, deposit):
            row = await conn.fetchrow(RECORD, _key_of(command))
            assert row["content_hash_keyed"]
            assert row["content_hash"] != plain(command), "not the plain SHA-256"
            assert row["content_hash"] == key.keyed(plain(command))
    await _assert_retries_graded(writer, person, deposit, first)


@asynccontextmanager
async def upgraded_database(database: Any, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A database release 0.1 migrated (0001-0003), then upgraded with the current migrations,
    as `ledgerflow migrate` in the upgrade's pre-upgrade hook does. (owner DSN, app DSN)."""
    for version in RELEASE_01_MIGRATIONS:
        shutil.copy(MIGRATIONS_DIR / f"{version}.sql", tmp_path)
    admin = await asyncpg.connect(database.admin_url)
    name = f"lf_keying_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" OWNER ledgerflow_owner')
    try:
        owner_dsn = database.owner_url.rsplit("/", 1)[0] + f"/{name}"
        await migrate(owner_dsn, tmp_path)
        await migrate(owner_dsn)
        yield owner_dsn, database.app_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_rows_written_plain_replay_before_and_after_the_data_step_keys_them(
    database: Any, tmp_path: Path
) -> None:
    key = ContentHashKey(os.urandom(32))
    async with upgraded_database(database, tmp_path) as (owner_dsn, app_dsn):
        pool = await create_pool(app_dsn, size_max=2)
        admin = await asyncpg.connect(owner_dsn)
        try:
            writer = LedgerWriter(pool, UNBOUNDED, content_hash_key=key)
            person = onboarding()
            deposit = cashin(wallet_of(person), 700)
            first = await apply_all(writer, person, deposit)
            # Until the deployment is keyed, workers write plain rows, as release 0.1 does: an
            # older worker still running grades them correctly.
            row = await admin.fetchrow(RECORD, deposit.cashin_id)
            assert (row["content_hash"], row["content_hash_keyed"]) == (plain(deposit), False)
            assert not (await keying_state(admin)).keyed
            await _assert_retries_graded(writer, person, deposit, first)

            # Migrating again without the flag keys nothing: older workers may still run.
            await migrate(owner_dsn, content_hash_key=key)
            assert not (await admin.fetchrow(RECORD, deposit.cashin_id))["content_hash_keyed"]

            # The data step, asked once no older worker runs: every row re-keyed, none twice
            # (two processes at once), and retries of the old rows still replay.
            await asyncio.gather(
                migrate(owner_dsn, content_hash_key=key, key_content_hashes_now=True),
                migrate(owner_dsn, content_hash_key=key, key_content_hashes_now=True),
            )
            assert (await keying_state(admin)).rekeyed
            for command in (person, deposit):
                row = await admin.fetchrow(RECORD, _key_of(command))
                assert row["content_hash_keyed"]
                assert row["content_hash"] == key.keyed(plain(command)) != plain(command)
            await _assert_retries_graded(writer, person, deposit, first)

            # New rows are keyed; a row still plain (an older worker's, written against advice
            # after the data step) is graded by its own kind, and the next sweep keys it.
            later = cashin(wallet_of(person), 5)
            [done] = await apply_all(writer, later)
            row = await admin.fetchrow(RECORD, later.cashin_id)
            assert row["content_hash"] == key.keyed(plain(later))
            await admin.execute(
                "UPDATE idempotency_records SET content_hash = $2, content_hash_keyed = false"
                " WHERE key = $1",
                later.cashin_id,
                plain(later),
            )
            [replayed] = await apply_all(writer, later)
            assert (replayed.kind, replayed.event_id) == (OutcomeKind.REPLAYED, done.event_id)
            await migrate(owner_dsn, content_hash_key=key, key_content_hashes_now=True)
            assert (await admin.fetchrow(RECORD, later.cashin_id))["content_hash"] == key.keyed(
                plain(later)
            )

            # Another key is refused, by a worker (every retry would be an id_conflict) and by a
            # migration; keying an existing deployment with the public dev key is refused too.
            other = LedgerWriter(pool, UNBOUNDED, content_hash_key=ContentHashKey(os.urandom(32)))
            with pytest.raises(ContentHashKeyError):
                await apply_all(other, deposit)
            with pytest.raises(ContentHashKeyError):
                await migrate(owner_dsn, content_hash_key=ContentHashKey(os.urandom(32)))
            with pytest.raises(MigrationError, match="development key"):
                await migrate(owner_dsn, key_content_hashes_now=True)
            assert all(r.ok for r in await run_audit(admin))
        finally:
            await admin.close()
            await pool.close()


async def test_marking_the_deployment_keyed_waits_for_the_batches_in_flight(
    database: Any, tmp_path: Path
) -> None:
    """A batch that read "plain" may still be writing plain rows: the mark waits for it to
    commit, so the re-keying pass after the mark sees its rows and none stays plain."""
    key = ContentHashKey(os.urandom(32))
    async with upgraded_database(database, tmp_path) as (owner_dsn, app_dsn):
        batch = await asyncpg.connect(app_dsn)
        admin = await asyncpg.connect(owner_dsn)
        try:
            transaction = batch.transaction()
            await transaction.start()
            assert await batch.fetchval("SELECT content_hash_key_check()") is None
            keying = asyncio.ensure_future(
                migrate(owner_dsn, content_hash_key=key, key_content_hashes_now=True)
            )
            await asyncio.sleep(0.5)
            assert not keying.done(), "the mark waits for the batch"
            straggler = uuid.uuid4()
            await batch.execute(
                "INSERT INTO idempotency_records (flow, key, content_hash, outcome, reason,"
                " result_topic, result_event_id, result_payload)"
                " VALUES ('cashin', $1, $2, 'rejected', 'limit_exceeded', 'cashin.rejected',"
                " $3, '{}')",
                straggler,
                bytes(32),
                uuid.uuid4(),
            )
            await transaction.commit()
            await asyncio.wait_for(keying, 10)
            row = await admin.fetchrow(RECORD, straggler)
            assert (row["content_hash"], row["content_hash_keyed"]) == (key.keyed(bytes(32)), True)
            # A batch after the mark reads the deployment's key check: it writes keyed.
            assert await batch.fetchval("SELECT content_hash_key_check()") == key.check
        finally:
            await admin.close()
            await batch.close()


async def _assert_retries_graded(
    writer: LedgerWriter, person: BaseModel, deposit: Any, first: list[Any]
) -> None:
    again = await apply_all(writer, person, deposit)
    assert [(o.kind, o.event_id) for o in again] == [
        (OutcomeKind.REPLAYED, o.event_id) for o in first
    ]
    [conflict] = await apply_all(writer, deposit.model_copy(update={"amount": 701}))
    assert conflict.kind is OutcomeKind.CONFLICT


def _key_of(command: Any) -> uuid.UUID:
    return getattr(command, "customer_id", None) or command.cashin_id


async def test_a_fresh_install_with_its_own_key_is_keyed_at_once(database: Any) -> None:
    """No older worker ever ran on a schema this migration created: nothing to wait for."""
    key = ContentHashKey(os.urandom(32))
    admin = await asyncpg.connect(database.admin_url)
    name = f"lf_fresh_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" OWNER ledgerflow_owner')
    try:
        owner_dsn = database.owner_url.rsplit("/", 1)[0] + f"/{name}"
        await migrate(owner_dsn, content_hash_key=key)
        conn = await asyncpg.connect(owner_dsn)
        try:
            assert (await keying_state(conn)).keyed
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
