"""The outbox's read side, for the relay and `ledgerflow outbox`: pending rows in id order, marking
them published, quarantining the ones that cannot be published, pruning old published ones.

Rows are picked by `published_at IS NULL`, never by an id cursor: transactions commit out of id
order, so a cursor would skip a row that becomes visible late. Only one relay is active at a
time (session advisory lock), which keeps per-key order (docs/decisions/outbox-relay.md).

A quarantined row (`quarantined_at` set) is skipped until `ledgerflow outbox retry` clears it, and
so is every later row of its message key, whatever its topic: those are quarantined behind it
("held"), so that a key's events are never published out of order.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ledgerflow.ledger_db import sql

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    import asyncpg

RELAY_LOCK_KEY = 7_406_931_200_002
# Taken (per transaction) by whatever sets or clears quarantined_at: the relay's quarantining and
# `ledgerflow outbox retry`. Serialised, a retry can never miss a row the relay is quarantining
# at that moment, and the relay never holds a row behind one a retry has just released.
QUARANTINE_LOCK_KEY = 7_406_931_200_005
RELAY_BATCH_MAX = 5_000
LAST_ERROR_CHARS_MAX = 500  # what the quarantine keeps of an error message
HELD_ERROR = "held behind quarantined row "  # + the id of the row of its key it waits for
LISTED_MAX = 10_000  # `ledgerflow outbox quarantined` shows at most this many rows


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: str
    topic: str
    key: bytes
    payload: bytes
    traceparent: str | None
    attempts: int = 0
    # The lowest quarantined row of the same key, when it is older than this one: this row must
    # wait behind it (be quarantined too), or the key's events would be published out of order.
    blocked_by: int | None = None


@dataclass(frozen=True, slots=True)
class FailedRow:
    """A row whose publication failed for a reason of its own, after the failure was recorded."""

    id: int
    key: bytes
    topic: str
    attempts: int
    quarantined: bool


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int  # not published and not quarantined: the relay's backlog
    oldest_pending_age_s: float  # 0 when none
    quarantined: int


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    """What `ledgerflow outbox quarantined` shows: metadata only, never the payload."""

    id: int
    topic: str
    key: str
    attempts: int
    last_error: str
    created_at: datetime
    quarantined_at: datetime
    age_s: float  # since the row was written: how long its answer has been waiting

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "topic": self.topic,
            "key": self.key,
            "attempts": self.attempts,
            "error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "quarantined_at": self.quarantined_at.isoformat(),
            "age_s": round(self.age_s, 3),
        }


@dataclass(frozen=True, slots=True)
class PruneStep:
    deleted: int
    examined: int
    last_id: int | None  # the highest id examined; None when no row lies beyond the cursor
    reached_young: bool  # a row examined is younger than the retention: the rest is too


async def try_lock_relay(conn: asyncpg.Connection) -> bool:
    """Held for the connection's life: if the relay dies, PostgreSQL frees it for a standby."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY))


# One statement, so one snapshot: the rows to send and the quarantined rows they must wait behind
# cannot disagree (a retry committing in between would otherwise let a later row of a key out
# ahead of the earlier one it just released). `$3` false skips the quarantine lookup (no row is
# quarantined), which would otherwise visit every pending row each round.
_FETCH_PENDING = """
WITH flowing AS (
    SELECT id, event_id, topic, key, payload, traceparent, attempts FROM outbox
    WHERE published_at IS NULL AND quarantined_at IS NULL AND key <> ALL($2::bytea[])
    ORDER BY id LIMIT $1
), blockers AS (
    SELECT key, min(id) AS id FROM outbox
    WHERE $3 AND published_at IS NULL AND quarantined_at IS NOT NULL
      AND key IN (SELECT key FROM flowing)
    GROUP BY key
)
SELECT f.id, f.event_id, f.topic, f.key, f.payload, f.traceparent, f.attempts,
       b.id AS blocked_by
FROM flowing f LEFT JOIN blockers b ON b.key = f.key AND b.id < f.id
ORDER BY f.id
"""


async def fetch_pending(
    conn: asyncpg.Connection,
    limit: int,
    *,
    skip_keys: Sequence[bytes] = (),
    check_quarantine: bool = False,
) -> list[OutboxRow]:
    """Unpublished, unquarantined rows in id order, but none of `skip_keys` (keys backing off
    after a failure). With `check_quarantine`, each row says which quarantined row of its key it
    must wait behind, if any."""
    rows = await conn.fetch(
        _FETCH_PENDING, min(limit, RELAY_BATCH_MAX), list(skip_keys), check_quarantine
    )
    return [
        OutboxRow(
            r["id"],
            str(r["event_id"]),
            r["topic"],
            bytes(r["key"]),
            bytes(r["payload"]),
            r["traceparent"],
            r["attempts"],
            r["blocked_by"],
        )
        for r in rows
    ]


async def mark_published(conn: asyncpg.Connection, ids: list[int]) -> None:
    # One timestamp per statement: rows published in one round share it, and a later round's are
    # later, so per-key publication order can be read back from published_at.
    await conn.execute(
        "UPDATE outbox SET published_at = statement_timestamp() WHERE id = ANY($1::bigint[])", ids
    )


def bounded_error(error_class: str, message: str) -> str:
    """The text kept in last_error: the class, then as much of the message as fits."""
    text = f"{error_class}: {message}" if message else error_class
    return text[:LAST_ERROR_CHARS_MAX]


@asynccontextmanager
async def _quarantine_transaction(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction holding QUARANTINE_LOCK_KEY: the one way quarantined_at is set or cleared."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", QUARANTINE_LOCK_KEY)
        yield


async def record_failures(
    conn: asyncpg.Connection, failures: Sequence[tuple[int, str]], quarantine_after: int
) -> list[FailedRow]:
    """Count one failed attempt for each (id, error text); a row that reaches
    `quarantine_after` attempts is quarantined in the same statement."""
    if not failures:
        return []
    async with _quarantine_transaction(conn):
        rows = await conn.fetch(
            "UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error,"
            " quarantined_at = CASE WHEN o.attempts + 1 >= $3 THEN clock_timestamp() END"
            " FROM unnest($1::bigint[], $2::text[]) AS f(id, error)"
            " WHERE o.id = f.id AND o.published_at IS NULL AND o.quarantined_at IS NULL"
            " RETURNING o.id, o.key, o.topic, o.attempts, o.quarantined_at IS NOT NULL AS q",
            [row_id for row_id, _ in failures],
            [error for _, error in failures],
            quarantine_after,
        )
    return [
        FailedRow(r["id"], bytes(r["key"]), r["topic"], r["attempts"], r["q"])
        for r in sorted(rows, key=lambda r: int(r["id"]))
    ]


async def quarantine_held(conn: asyncpg.Connection, ids: Sequence[int]) -> list[tuple[int, str]]:
    """Quarantine each of these rows that an older quarantined row of its key still waits for
    (checked again here, after any retry that committed since they were fetched).
    Returns (id, topic) of the rows quarantined."""
    if not ids:
        return []
    async with _quarantine_transaction(conn):
        rows = await conn.fetch(
            "UPDATE outbox o SET quarantined_at = clock_timestamp(), last_error = $2 || b.id"
            " FROM (SELECT key, min(id) AS id FROM outbox"
            "       WHERE published_at IS NULL AND quarantined_at IS NOT NULL GROUP BY key) b"
            " WHERE o.id = ANY($1::bigint[]) AND o.key = b.key AND b.id < o.id"
            " AND o.published_at IS NULL AND o.quarantined_at IS NULL"
            " RETURNING o.id, o.topic",
            list(ids),
            HELD_ERROR,
        )
    return sorted((int(r["id"]), str(r["topic"])) for r in rows)


async def outbox_stats(conn: asyncpg.Connection) -> OutboxStats:
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE quarantined_at IS NULL) AS n,"
        " coalesce(extract(epoch FROM clock_timestamp()"
        "   - min(created_at) FILTER (WHERE quarantined_at IS NULL)), 0)::float8 AS age,"
        " count(*) FILTER (WHERE quarantined_at IS NOT NULL) AS q"
        " FROM outbox WHERE published_at IS NULL"
    )
    assert row is not None
    return OutboxStats(int(row["n"]), float(row["age"]), int(row["q"]))


async def pending_stats(conn: asyncpg.Connection) -> tuple[int, float]:
    """Rows waiting for the relay (quarantined ones excluded) and the age in seconds of the
    oldest one (0 when none)."""
    stats = await outbox_stats(conn)
    return stats.pending, stats.oldest_pending_age_s


async def list_quarantined(
    conn: asyncpg.Connection, limit: int = LISTED_MAX
) -> list[QuarantinedRow]:
    rows = await conn.fetch(
        "SELECT id, topic, key, attempts, coalesce(last_error, '') AS last_error, created_at,"
        " quarantined_at, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age"
        " FROM outbox WHERE published_at IS NULL AND quarantined_at IS NOT NULL"
        " ORDER BY id LIMIT $1",
        min(limit, LISTED_MAX),
    )
    return [
        QuarantinedRow(
            r["id"],
            r["topic"],
            bytes(r["key"]).decode("utf-8", "replace"),
            r["attempts"],
            r["last_error"],
            r["created_at"],
            r["quarantined_at"],
            float(r["age"]),
        )
        for r in rows
    ]


async def retry_quarantined(conn: asyncpg.Connection, ids: Sequence[int] | None) -> list[int]:
    """Release quarantined rows for the relay, which publishes them in id order; None: all.

    A row given by id is released with every older quarantined row of its key, so that it is
    not published ahead of them; younger ones of its key stay quarantined (and keep holding the
    key). Attempts start again from zero. Returns the ids released, in order; safe to repeat.
    """
    async with _quarantine_transaction(conn):
        if ids is None:
            rows = await conn.fetch(
                "UPDATE outbox SET quarantined_at = NULL, attempts = 0"
                " WHERE published_at IS NULL AND quarantined_at IS NOT NULL RETURNING id"
            )
        else:
            rows = await conn.fetch(
                "WITH chosen AS ("
                "  SELECT key, max(id) AS upto FROM outbox WHERE id = ANY($1::bigint[])"
                "  AND published_at IS NULL AND quarantined_at IS NOT NULL GROUP BY key)"
                " UPDATE outbox o SET quarantined_at = NULL, attempts = 0 FROM chosen c"
                " WHERE o.key = c.key AND o.id <= c.upto"
                " AND o.published_at IS NULL AND o.quarantined_at IS NOT NULL RETURNING o.id",
                list(ids),
            )
        if rows:
            await conn.execute(sql.NOTIFY_OUTBOX)  # wake the relay
    return sorted(int(r["id"]) for r in rows)


# The cursor walks the table in id order, a bounded number of rows per statement, so a statement
# costs the same whether there is much or nothing to prune (a `published_at < cutoff` filter with
# a LIMIT would read every young row when fewer than LIMIT are old). created_at follows the id
# (both are taken at insert), so once a row examined is younger than the retention, so is the
# rest: the sweep starts again from the beginning later. Only published rows are deleted. The
# delete names the head's ids as an array, so it probes them by primary key: joined to the head
# instead, the planner read the whole outbox for the few rows old enough (a week of events).
_PRUNE_STEP = """
WITH head AS (
    SELECT id, created_at FROM outbox WHERE id > $1 ORDER BY id LIMIT $2
), gone AS (
    DELETE FROM outbox o
    WHERE o.id = ANY (ARRAY(SELECT id FROM head))
      AND o.published_at < statement_timestamp() - make_interval(secs => $3)
    RETURNING o.id
)
SELECT (SELECT count(*) FROM gone)::int AS deleted,
       (SELECT count(*) FROM head)::int AS examined,
       (SELECT max(id) FROM head) AS last_id,
       coalesce((SELECT bool_or(created_at >= statement_timestamp() - make_interval(secs => $3))
                 FROM head), false) AS young
"""


async def prune_published(
    conn: asyncpg.Connection, after_id: int, rows: int, retention_s: float
) -> PruneStep:
    """One bounded statement: delete the published rows older than `retention_s` among the
    `rows` rows after `after_id`. The journal is never touched: only the outbox is pruned."""
    row = await conn.fetchrow(_PRUNE_STEP, after_id, rows, float(retention_s))
    assert row is not None
    return PruneStep(row["deleted"], row["examined"], row["last_id"], row["young"])
