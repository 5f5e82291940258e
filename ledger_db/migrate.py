"""Versioned plain-SQL migrations, applied in one transaction under an advisory lock.

Hand-written rather than dbmate/yoyo: asyncpg is already here, the advisory lock makes two
concurrent `ledgerflow migrate` runs safe (dbmate takes no lock), and a checksum per version
refuses a migration file edited after it was applied (docs/decisions/migrations.md).

After the SQL, the data steps that need a secret SQL does not have: keying the content hashes
(ledger_db/content_hash.py), in bounded batches of their own transactions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ledgerflow.ledger_db.content_hash import (
    DEV_CONTENT_HASH_KEY,
    ContentHashKey,
    key_content_hashes,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every process that migrates this database.
_ADVISORY_LOCK_KEY = 7_406_931_200_001
# Absent while the directory stops before 0004 (tests of earlier migrations).
_HAS_KEYING = "SELECT to_regclass('content_hash_keying') IS NOT NULL"


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """An applied migration no longer matches its file: the schema's history was rewritten."""


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    files = sorted(directory.glob("*.sql"))
    return [Migration(version=f.stem, sql=f.read_text(encoding="utf-8")) for f in files]


def migrations_digest(directory: Path = MIGRATIONS_DIR) -> str:
    """One hash of every migration, e.g. to name a template database built from them."""
    digest = hashlib.sha256()
    for migration in load_migrations(directory):
        digest.update(migration.version.encode())
        digest.update(migration.checksum.encode())
    return digest.hexdigest()[:16]


async def migrate(
    dsn: str,
    directory: Path = MIGRATIONS_DIR,
    *,
    content_hash_key: ContentHashKey = DEV_CONTENT_HASH_KEY,
    key_content_hashes_now: bool = False,
) -> list[str]:
    """Apply the pending migrations, then the data steps; return the versions applied.

    Content hashes are keyed when asked (`key_content_hashes_now`): once no worker that
    compares plain hashes (release 0.1) runs, or will after a rollback. A fresh install (this
    call created the schema) with a deployment's own key is keyed at once: no older worker has
    ever run against it.
    """
    if key_content_hashes_now and content_hash_key.is_dev:
        raise MigrationError(
            "refusing to key content hashes with the public development key: "
            "set LEDGERFLOW_CONTENT_HASH_KEY"
        )
    migrations = load_migrations(directory)
    conn = await asyncpg.connect(dsn)
    try:
        done = await _apply_sql(conn, migrations)
        fresh = bool(done) and bool(migrations) and done[0] == migrations[0].version
        mark = key_content_hashes_now or (fresh and not content_hash_key.is_dev)
        if await conn.fetchval(_HAS_KEYING):
            await key_content_hashes(conn, content_hash_key, mark=mark)
        return done
    finally:
        await conn.close()


async def _apply_sql(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """The pending SQL migrations, in one transaction under the advisory lock."""
    async with conn.transaction():
        # Taken before anything else, so a second process waits here and then finds
        # everything applied.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {row["version"]: row["checksum"] for row in rows}
        done: list[str] = []
        for migration in migrations:
            known = applied.get(migration.version)
            if known is not None:
                if known != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version} changed after it was applied"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                migration.version,
                migration.checksum,
            )
            done.append(migration.version)
        return done
