"""Versioned plain-SQL migrations, applied in one transaction under an advisory lock.

Hand-written rather than dbmate/yoyo: asyncpg is already here, the advisory lock makes two
concurrent `ledgerflow migrate` runs safe (dbmate takes no lock), and a checksum per version
refuses a migration file edited after it was applied (docs/decisions/migrations.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every process that migrates this database.
_ADVISORY_LOCK_KEY = 7_406_931_200_001


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


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the pending migrations; return the versions applied (empty when up to date)."""
    migrations = load_migrations(directory)
    conn = await asyncpg.connect(dsn)
    try:
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
    finally:
        await conn.close()
