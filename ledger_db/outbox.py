"""The outbox's read side, for the relay: pending rows in id order, marking them published.

Rows are picked by `published_at IS NULL`, never by an id cursor: transactions commit out of id
order, so a cursor would skip a row that becomes visible late. Only one relay is active at a
time (session advisory lock), which keeps per-key order (docs/decisions/outbox-relay.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

RELAY_LOCK_KEY = 7_406_931_200_002
OUTBOX_CHANNEL = "ledgerflow_outbox"
RELAY_BATCH_MAX = 5_000


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: str
    topic: str
    key: bytes
    payload: bytes
    traceparent: str | None


async def try_lock_relay(conn: asyncpg.Connection) -> bool:
    """Held for the connection's life: if the relay dies, PostgreSQL frees it for a standby."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY))


async def fetch_pending(conn: asyncpg.Connection, limit: int) -> list[OutboxRow]:
    rows = await conn.fetch(
        "SELECT id, event_id, topic, key, payload, traceparent FROM outbox"
        " WHERE published_at IS NULL ORDER BY id LIMIT $1",
        min(limit, RELAY_BATCH_MAX),
    )
    return [
        OutboxRow(
            r["id"],
            str(r["event_id"]),
            r["topic"],
            bytes(r["key"]),
            bytes(r["payload"]),
            r["traceparent"],
        )
        for r in rows
    ]


async def mark_published(conn: asyncpg.Connection, ids: list[int]) -> None:
    await conn.execute(
        "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1::bigint[])", ids
    )


async def pending_stats(conn: asyncpg.Connection) -> tuple[int, float]:
    """Pending rows and the age in seconds of the oldest one (0 when none)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n,"
        " coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS age"
        " FROM outbox WHERE published_at IS NULL"
    )
    assert row is not None
    return int(row["n"]), float(row["age"])
