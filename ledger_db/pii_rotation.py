"""Re-encrypt personal data under the active key, so an old key can leave the keyring."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledgerflow.ledger_db.pii import ENCRYPTED_FIELDS

if TYPE_CHECKING:
    import asyncpg

    from ledgerflow.ledger_db.pii import PiiVault

ROTATION_BATCH_ROWS = 500

_SELECT = (
    "SELECT customer_id, key_id, " + ", ".join(ENCRYPTED_FIELDS) + " FROM customer_pii"
    " WHERE key_id <> $1 ORDER BY customer_id LIMIT $2 FOR UPDATE"
)
_UPDATE = (
    "UPDATE customer_pii SET key_id = $2, "
    + ", ".join(f"{name} = ${i + 3}" for i, name in enumerate(ENCRYPTED_FIELDS))
    + " WHERE customer_id = $1"
)


async def rotate_pii(conn: asyncpg.Connection, vault: PiiVault) -> int:
    """Rows re-encrypted; one transaction per batch, so a large table rotates in steps."""
    rotated = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(_SELECT, vault.active_key_id, ROTATION_BATCH_ROWS)
            for row in rows:
                cid = row["customer_id"]
                plain = [
                    vault.decrypt(cid, name, row[name], row["key_id"]) for name in ENCRYPTED_FIELDS
                ]
                sealed = [
                    vault.encrypt(cid, name, value)
                    for name, value in zip(ENCRYPTED_FIELDS, plain, strict=True)
                ]
                await conn.execute(_UPDATE, cid, vault.active_key_id, *sealed)
        rotated += len(rows)
        if len(rows) < ROTATION_BATCH_ROWS:
            return rotated
