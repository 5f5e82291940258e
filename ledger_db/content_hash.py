"""Content hashes at rest, keyed: HMAC-SHA-256 under a server secret of the plain SHA-256.

An idempotency record keeps the content hash of its command, to grade a retry. The plain SHA-256
of the canonical data (`contracts.parsing.content_hash`) covers name, phone and national id, so
anyone reading the table could confirm a guess offline; keyed, a guess needs the secret. The key
is applied to the plain digest, not to the data, so a row written plain can be re-keyed without
the data it came from, and the token's `data_sha256` claim keeps using the plain digest.

Rolling upgrade (docs/decisions/migrations.md, "0004"): release 0.1 compares plain hashes only,
so keyed rows may exist only once no such worker runs, or will again. Workers write plain rows
until the deployment is marked keyed, and grade each row by its own `content_hash_keyed`.
`ledgerflow migrate --key-content-hashes`, run once that holds, marks the deployment keyed and
re-keys the rows written before, in bounded batches.
"""

from __future__ import annotations

import base64
import hmac
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("ledgerflow.content_hash")

KEY_BYTES_MIN = 32
REKEY_BATCH_ROWS = 1_000
_KEY_CHECK_TEXT = b"ledgerflow content hash key check v1"


class ContentHashKeyError(RuntimeError):
    """The deployment's content hashes are keyed under another key than this process has.

    Grading a retry with the wrong key would answer `id_conflict` to every honest retry, so the
    batch fails (and is retried) until the configuration is fixed.
    """


@dataclass(frozen=True, slots=True)
class ContentHashKey:
    secret: bytes = field(repr=False)
    check: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < KEY_BYTES_MIN:
            raise ValueError(f"the content hash key has at least {KEY_BYTES_MIN} bytes")
        object.__setattr__(self, "check", self.keyed(_KEY_CHECK_TEXT))

    @classmethod
    def from_text(cls, text: str) -> ContentHashKey:
        """Url-safe base64 (padding optional), like the PII keys."""
        return cls(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))

    @property
    def is_dev(self) -> bool:
        return hmac.compare_digest(self.secret, DEV_CONTENT_HASH_KEY.secret)

    def keyed(self, plain: bytes) -> bytes:
        """What a keyed row stores for a command whose plain content hash is `plain`."""
        return hmac.digest(self.secret, plain, "sha256")

    def writes_keyed(self, deployment_check: bytes | None) -> bool:
        """Whether to write keyed hashes, given the deployment's key check (None: plain)."""
        if deployment_check is None:
            return False
        if not hmac.compare_digest(deployment_check, self.check):
            raise ContentHashKeyError(
                "the deployment's content hashes are keyed with another key than "
                "LEDGERFLOW_CONTENT_HASH_KEY"
            )
        return True


# Development key: the embedded stack, tests and the demo. Public, so worthless as a secret:
# every deployment sets LEDGERFLOW_CONTENT_HASH_KEY (or its _FILE), and `ledgerflow migrate
# --key-content-hashes` refuses to key a deployment with it.
DEV_CONTENT_HASH_KEY_TEXT = "ZGV2LW9ubHktY29udGVudC1oYXNoLWtleS1ub3QtZm9yLXByb2R1Y3Rpb24"
DEV_CONTENT_HASH_KEY = ContentHashKey.from_text(DEV_CONTENT_HASH_KEY_TEXT)


@dataclass(frozen=True, slots=True)
class KeyingState:
    keyed: bool
    rekeyed: bool

    def describe(self) -> str:
        if self.rekeyed:
            return "keyed (HMAC-SHA-256), every row"
        if self.keyed:
            return "keyed for new rows; older rows not re-keyed yet (run `ledgerflow migrate`)"
        return (
            "plain SHA-256: run `ledgerflow migrate --key-content-hashes` once no worker older "
            "than release 0.2 runs, or will (docs/decisions/migrations.md)"
        )


_STATE = "SELECT keyed_since, key_check, rekeyed_at FROM content_hash_keying"
_MARK = "SELECT mark_content_hashes_keyed($1)"
_REKEYED = "UPDATE content_hash_keying SET rekeyed_at = now() WHERE keyed_since IS NOT NULL"
# Keyset order on the primary key: one pass over the table, whatever its size.
_NEXT_ROWS = """
SELECT flow, key, content_hash, content_hash_keyed FROM idempotency_records
WHERE (flow, key) > ($1, $2) ORDER BY flow, key LIMIT $3
"""
# Only a row still plain, and still holding the hash it was read with: a concurrent pass (a second
# `ledgerflow migrate`) can never key a row twice.
_REKEY = """
UPDATE idempotency_records r SET content_hash = u.keyed, content_hash_keyed = true
FROM unnest($1::text[], $2::uuid[], $3::bytea[], $4::bytea[]) AS u(flow, key, plain, keyed)
WHERE r.flow = u.flow AND r.key = u.key AND NOT r.content_hash_keyed AND r.content_hash = u.plain
"""


async def keying_state(conn: asyncpg.Connection) -> KeyingState:
    row = await conn.fetchrow(_STATE)
    assert row is not None, "0004 inserts the state row"
    return KeyingState(keyed=row["keyed_since"] is not None, rekeyed=row["rekeyed_at"] is not None)


async def key_content_hashes(conn: asyncpg.Connection, key: ContentHashKey, *, mark: bool) -> int:
    """The data step of `ledgerflow migrate`: rows re-keyed (0 when there is nothing to do).

    `mark` (`--key-content-hashes`): mark the deployment keyed, after the batches in flight, and
    re-key every plain row, again if it was done before. Without it, only a pass that did not
    finish is completed. Idempotent, and safe from two processes at once.
    """
    row = await conn.fetchrow(_STATE)
    assert row is not None, "0004 inserts the state row"
    key.writes_keyed(row["key_check"])  # another key is refused, even with nothing to do
    if not mark and (row["keyed_since"] is None or row["rekeyed_at"] is not None):
        return 0
    async with conn.transaction():
        key.writes_keyed(await conn.fetchval(_MARK, key.check))
    rekeyed = 0
    after: tuple[str, uuid.UUID] = ("", uuid.UUID(int=0))
    while True:
        rows = await conn.fetch(_NEXT_ROWS, *after, REKEY_BATCH_ROWS)
        if not rows:
            break
        plain = [r for r in rows if not r["content_hash_keyed"]]
        if plain:
            status = await conn.execute(
                _REKEY,
                [r["flow"] for r in plain],
                [r["key"] for r in plain],
                [r["content_hash"] for r in plain],
                [key.keyed(bytes(r["content_hash"])) for r in plain],
            )
            rekeyed += int(status.split()[-1])
        after = (rows[-1]["flow"], rows[-1]["key"])
    await conn.execute(_REKEYED)
    log.info("content hashes keyed", extra={"rows_rekeyed": rekeyed})
    return rekeyed
