"""The outbox's SQL on a real PostgreSQL: quarantine bookkeeping, `outbox retry`, retention, the
relay's session settings, and migration 0005 being expand-only."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ledgerflow.ledger_db.migrate import MIGRATIONS_DIR, migrate
from ledgerflow.ledger_db.outbox import (
    HELD_ERROR,
    fetch_pending,
    list_quarantined,
    outbox_stats,
    prune_published,
    quarantine_held,
    record_failures,
    retry_quarantined,
)
from ledgerflow.ledger_db.sql import OUTBOX_CHANNEL
from ledgerflow.workers.relay import Relay, connect_relay

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

pytestmark = pytest.mark.integration

WEEK_S = 7 * 24 * 3_600
QUARANTINE_VERSION = "0005_outbox_quarantine"


async def add_rows(conn: asyncpg.Connection, rows: Sequence[tuple[str, str]]) -> list[int]:
    """(topic, key) rows, inserted as the workers' role would, in this order."""
    return [
        await conn.fetchval(
            "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4)"
            " RETURNING id",
            uuid.uuid4(),
            topic,
            key.encode(),
            b'{"specversion":"1.0"}',
        )
        for topic, key in rows
    ]


@pytest.fixture
async def conns(database: Any) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """(app role, superuser): the relay's rights, and a way to age rows."""
    app = await asyncpg.connect(database.app_url)
    admin = await asyncpg.connect(database.admin_url)
    try:
        yield app, admin
    finally:
        await app.close()
        await admin.close()


async def test_failures_count_attempts_and_quarantine_at_the_bound(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    app, _ = conns
    a, b = await add_rows(app, [("t.completed", "k"), ("t.completed", "m")])
    for attempt in (1, 2):
        failed = await record_failures(app, [(a, "UnknownTopicOrPartitionError: gone")], 3)
        assert [(f.id, f.attempts, f.quarantined) for f in failed] == [(a, attempt, False)]
    [last] = await record_failures(app, [(a, "UnknownTopicOrPartitionError: gone")], 3)
    assert (last.attempts, last.quarantined, last.key, last.topic) == (3, True, b"k", "t.completed")
    # A quarantined row is not counted again, and it is not fetched.
    assert await record_failures(app, [(a, "X")], 3) == []
    assert [r.id for r in await fetch_pending(app, 10)] == [b]
    stats = await outbox_stats(app)
    assert (stats.pending, stats.quarantined) == (1, 1)


async def test_rows_behind_a_quarantined_row_of_their_key_are_found_and_held(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    app, admin = conns
    early, q, other, later_same_topic, later_other_topic = await add_rows(
        app,
        [
            ("cashin.completed", "k"),
            ("transfer.completed", "k"),
            ("cashin.completed", "m"),
            ("transfer.completed", "k"),
            ("cashin.completed", "k"),
        ],
    )
    await admin.execute("UPDATE outbox SET quarantined_at = now() WHERE id = $1", q)
    rows = await fetch_pending(app, 10, check_quarantine=True)
    assert [(r.id, r.blocked_by) for r in rows] == [
        (early, None),  # older than the quarantined row: free to go
        (other, None),
        (later_same_topic, q),
        (later_other_topic, q),  # the key is held whatever the topic
    ]
    # Without the lookup (no row known quarantined) nothing is marked; skipped keys stay out.
    assert {r.blocked_by for r in await fetch_pending(app, 10)} == {None}
    assert [r.id for r in await fetch_pending(app, 10, skip_keys=[b"k"])] == [other]

    held = await quarantine_held(app, [early, other, later_same_topic, later_other_topic])
    assert held == [
        (later_same_topic, "transfer.completed"),
        (later_other_topic, "cashin.completed"),
    ]
    listed = {r.id: r for r in await list_quarantined(app)}
    assert listed[later_other_topic].last_error == f"{HELD_ERROR}{q}"
    assert listed[q].key == "k"
    assert "payload" not in listed[q].as_json()


async def test_a_retry_that_committed_first_wins_over_holding(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    """Rows fetched as "blocked" just before a retry released the blocker are not held."""
    app, admin = conns
    q, later = await add_rows(app, [("t.completed", "k"), ("t.completed", "k")])
    await admin.execute("UPDATE outbox SET quarantined_at = now() WHERE id = $1", q)
    [row] = await fetch_pending(app, 10, check_quarantine=True)
    assert (row.id, row.blocked_by) == (later, q)
    assert await retry_quarantined(admin, None) == [q]
    assert await quarantine_held(app, [later]) == []
    assert (await outbox_stats(app)).quarantined == 0


async def test_retry_by_id_releases_the_older_rows_of_its_key_and_notifies(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    app, admin = conns
    k1, k2, m1, k3 = await add_rows(
        app, [("t.completed", "k"), ("t.rejected", "k"), ("t.completed", "m"), ("t.completed", "k")]
    )
    await admin.execute(
        "UPDATE outbox SET quarantined_at = now(), attempts = 6, last_error = 'X'"
        " WHERE id = ANY($1::bigint[])",
        [k1, k2, m1, k3],
    )
    woken = asyncio.Event()
    await admin.add_listener(OUTBOX_CHANNEL, lambda *_: woken.set())
    # k2 is released with k1 (older, same key), so it cannot be published ahead of it; k3 (younger)
    # stays quarantined and keeps holding the key; m1 is another key.
    assert await retry_quarantined(app, [k2]) == [k1, k2]
    await asyncio.wait_for(woken.wait(), 5)
    assert [r.id for r in await list_quarantined(app)] == [m1, k3]
    assert [(r.id, r.attempts) for r in await fetch_pending(app, 10)] == [(k1, 0), (k2, 0)]
    assert await retry_quarantined(app, [k1, 999_999]) == []  # nothing quarantined by those ids
    assert await retry_quarantined(app, None) == [m1, k3]
    assert await retry_quarantined(app, None) == []  # safe to repeat


async def aged(admin: asyncpg.Connection, ids: Sequence[int], **ago: str | None) -> None:
    """Set created_at / published_at / quarantined_at to `now() - interval`."""
    for column, interval in ago.items():
        value = "NULL" if interval is None else f"now() - interval '{interval}'"
        await admin.execute(f"UPDATE outbox SET {column} = {value} WHERE id = ANY($1)", list(ids))


async def test_retention_prunes_only_old_published_rows_in_bounded_statements(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    app, admin = conns
    ids = await add_rows(app, [("t.completed", f"k{i}") for i in range(14)])
    old = ids[:10]
    await aged(admin, old, created_at="8 days")
    old_published = ids[0:4] + ids[7:10]
    await aged(admin, old_published, published_at="8 days")
    await aged(admin, [ids[4]], published_at="1 hour")  # retried late: kept a week from then
    # ids[5]: old, never published; ids[6]: old and quarantined.
    await aged(admin, [ids[6]], quarantined_at="8 days")
    await aged(admin, ids[10:12], published_at="1 minute")  # young and published
    # ids[12:14]: young, pending.

    cursor, deleted_per_step = 0, []
    while True:
        step = await prune_published(app, cursor, 3, WEEK_S)
        assert step.examined <= 3
        deleted_per_step.append(step.deleted)
        if step.reached_young or step.last_id is None or step.examined < 3:
            break
        cursor = step.last_id
    # ids 0-2 | 3 (4 and 5 kept) | 7, 8 (6 kept) | 9, and 10-11 are young: the sweep ends there.
    assert deleted_per_step == [3, 1, 2, 1]
    remaining = [r["id"] for r in await app.fetch("SELECT id FROM outbox ORDER BY id")]
    assert remaining == [ids[4], ids[5], ids[6], *ids[10:]]
    # Nothing more to prune: a sweep reads a bounded head and stops at the young rows.
    step = await prune_published(app, 0, 3, WEEK_S)
    assert (step.deleted, step.examined) == (0, 3)


async def test_the_relay_prunes_a_few_bounded_statements_per_round(
    conns: tuple[asyncpg.Connection, asyncpg.Connection], database: Any
) -> None:
    app, admin = conns
    ids = await add_rows(app, [("t.completed", f"k{i}") for i in range(11)])
    await aged(admin, ids, created_at="8 days", published_at="8 days")
    relay = Relay(
        database.app_url,
        "127.0.0.1:1",  # never started: only its pruning is under test
        retention_s=WEEK_S,
        prune_rows_per_statement=2,
        prune_statements_per_round=3,
    )
    before = REGISTRY.get_sample_value("ledgerflow_outbox_pruned_total") or 0.0
    conn = await connect_relay(database.app_url)
    try:
        await relay._prune(conn)
        assert relay.pruned == 6  # three statements of two rows, then the round ends
        await relay._prune(conn)
        assert relay.pruned == 6, "not due again at once"
        relay._prune_due_at = 0.0
        await relay._prune(conn)
        assert relay.pruned == 11
        assert relay._prune_after_id == 0, "swept to the end: the next sweep starts over"
    finally:
        await conn.close()
    assert await app.fetchval("SELECT count(*) FROM outbox") == 0
    assert (REGISTRY.get_sample_value("ledgerflow_outbox_pruned_total") or 0.0) - before == 11


async def test_only_the_outbox_may_be_deleted_from_the_journal_stays_append_only(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    app, _ = conns
    await add_rows(app, [("t.completed", "k")])
    assert await app.execute("DELETE FROM outbox") == "DELETE 1"
    for table in ("journal_entries", "postings", "idempotency_records", "balances"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(f"DELETE FROM {table}")
    # The new columns are the relay's to write; the rest of a row is not.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app.execute("UPDATE outbox SET payload = ''")


async def test_the_relay_session_has_keepalives_and_timeouts(database: Any) -> None:
    conn = await connect_relay(database.app_url)
    try:
        shown = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in (
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout",
                "statement_timeout",
                "lock_timeout",
                "idle_in_transaction_session_timeout",
                "synchronous_commit",
            )
        }
    finally:
        await conn.close()
    # Applied by PostgreSQL to its end of this TCP connection: a vanished relay host is dropped
    # after 10 s idle + 4 probes 5 s apart (or 30 s of unacknowledged data): lock freed < 1 min.
    assert shown == {
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "4",
        "tcp_user_timeout": "30000",  # ms
        "statement_timeout": "10s",
        "lock_timeout": "5s",
        "idle_in_transaction_session_timeout": "10s",
        "synchronous_commit": "off",
    }


async def test_0005_is_expand_only(database: Any, tmp_path: Path) -> None:
    """Rows written before 0005 get its defaults, and the previous release's relay and worker
    statements still work on the new schema, as the application role."""
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if path.stem < QUARANTINE_VERSION:
            shutil.copy(path, tmp_path)
    admin = await asyncpg.connect(database.admin_url)
    name = f"lf_migrate_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" OWNER ledgerflow_owner')
    try:
        owner_dsn = database.owner_url.rsplit("/", 1)[0] + f"/{name}"
        app_dsn = database.app_url.rsplit("/", 1)[0] + f"/{name}"
        await migrate(owner_dsn, tmp_path)
        app = await asyncpg.connect(app_dsn)
        try:
            [before] = await add_rows(app, [("t.completed", "k")])
            assert QUARANTINE_VERSION in await migrate(owner_dsn)
            row = await app.fetchrow(
                "SELECT attempts, quarantined_at, last_error FROM outbox WHERE id = $1", before
            )
            assert tuple(row.values()) == (0, None, None)
            # Release 0.1's worker COPY and relay statements, unchanged.
            await app.copy_records_to_table(
                "outbox",
                records=[(uuid.uuid4(), "t.completed", b"m", b"{}", None)],
                columns=["event_id", "topic", "key", "payload", "traceparent"],
            )
            pending = await app.fetch(
                "SELECT id, event_id, topic, key, payload, traceparent FROM outbox"
                " WHERE published_at IS NULL ORDER BY id LIMIT $1",
                10,
            )
            assert len(pending) == 2
            await app.execute(
                "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1::bigint[])",
                [r["id"] for r in pending],
            )
            assert (await outbox_stats(app)).pending == 0
        finally:
            await app.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
