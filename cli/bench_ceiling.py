"""`ledgerflow bench ceiling`: the yardstick every ledger report is judged by.

The same writes as the batched apply path (ledger_db/apply.py) makes for a P2P transfer: an
idempotency record, the batch's wallet rows locked in ascending id order, a journal entry, two
postings (with posted_at and balance_after), the balance updates with the outgoing totals, an
outbox row, one NOTIFY per transaction. Here as plain set-based SQL, one transaction per batch, on
one connection, with no Python in the loop: every id, amount and result event is made before the
clock starts and travels as one text parameter per column (split by `string_to_array`, as
ledger_db/sql.py does); the running balances, the entries' limit day and the per-account deltas'
application are PostgreSQL's. The schema is the real one: its triggers and constraints (balanced
entries, append-only journal, outgoing days that never go back) all run.

Not included, by design: reading the batch's idempotency records first and deciding each command
(the rules): that is the work the yardstick measures the real path's cost of.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from ledgerflow.contracts.codec import encode_event
from ledgerflow.contracts.events import TransferCompleted
from ledgerflow.contracts.topics import TRANSFER
from ledgerflow.ledger_db import sql
from ledgerflow.ledger_db.apply import BATCH_COMMANDS_MAX, RESULT_SOURCE
from ledgerflow.workers.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence

DATABASE = "ledgerflow_bench_ceiling"
BATCH = 500  # the yardstick's batch (the issue's: 9,092/s at batch 500 on one connection)
# Transfers applied before the clock starts (prepared statements, caches, plans warm), in the
# command and in `ceiling_for`; bench ledger warms up as much (bench_ledger.WARM_UP).
WARM_UP = 2_000
AMOUNT_MAX = 100  # amounts 1..100, as bench ledger and bench e2e send
SEED = 13
# Result events travel joined by the ASCII record separator: JSON escapes every control
# character, so none occurs inside one.
_SEPARATOR = "\x1e"

# Lock the batch's wallet rows in ascending id order (as sql.LOCK_WALLETS: batches touching the
# same wallets wait for each other instead of deadlocking), then read the clock under the locks:
# a posting is never earlier than the wallet's previous one (last_posted_at). One row back.
LOCK = """
WITH locked AS MATERIALIZED (
    SELECT b.account_id, b.last_posted_at
    FROM unnest(string_to_array($1, ',')::uuid[]) AS w(id)
    JOIN balances b ON b.account_id = w.id AND b.shard = 0
    WHERE b.kind = 'wallet'
    ORDER BY b.account_id
    FOR UPDATE OF b
),
clock AS MATERIALIZED (
    SELECT count(*) AS locked, max(last_posted_at) AS last_posted_at, clock_timestamp() AS at
    FROM locked
)
SELECT locked, greatest(at, last_posted_at) AS posted_at, (at AT TIME ZONE 'UTC')::date AS day
FROM clock
"""

# The entries and their postings, one statement: the sender's posting first (seq 0, -amount),
# then the receiver's. balance_after is the locked balance plus the account's postings so far in
# the batch, in batch order, which is also the order the postings get their ids in (their
# history's order, ORDER BY posted_at, id). Balances are read before this batch's update.
# The entry's limit day is the sender's: the later of its row's day and the clock's.
POST = """
WITH t AS MATERIALIZED (
    SELECT * FROM unnest(
        string_to_array($1, ',')::uuid[],
        string_to_array($2, ',')::uuid[],
        string_to_array($3, ',')::uuid[],
        string_to_array($4, ',')::uuid[],
        string_to_array($5, ',')::bigint[]
    ) WITH ORDINALITY AS t(entry_id, key, sender, receiver, amount, n)
),
entries AS (
    INSERT INTO journal_entries (id, flow, idempotency_key, out_day)
    SELECT t.entry_id, 'transfer', t.key, greatest(b.out_day, $7::date)
    FROM t JOIN balances b ON b.account_id = t.sender AND b.shard = 0
    ORDER BY t.n
),
moves AS (
    SELECT t.n, s.seq, t.entry_id,
           CASE s.seq WHEN 0 THEN t.sender ELSE t.receiver END AS account_id,
           CASE s.seq WHEN 0 THEN -t.amount ELSE t.amount END AS amount
    FROM t CROSS JOIN (VALUES (0::smallint), (1::smallint)) AS s(seq)
)
INSERT INTO postings (entry_id, seq, account_id, currency, amount, posted_at, balance_after)
SELECT m.entry_id, m.seq, m.account_id, $6, m.amount, $8::timestamptz,
       b.balance + sum(m.amount) OVER (PARTITION BY m.account_id ORDER BY m.n, m.seq)
FROM moves m JOIN balances b ON b.account_id = m.account_id AND b.shard = 0
ORDER BY m.n, m.seq
"""

# The idempotency records and the outbox rows, one statement: each result event sent once.
ANSWER = """
WITH t AS MATERIALIZED (
    SELECT * FROM unnest(
        string_to_array($1, ',')::uuid[],
        string_to_array($2, ','),
        string_to_array($3, ',')::uuid[],
        string_to_array($4, ',')::uuid[],
        string_to_array($5, ','),
        string_to_array($6, chr(30))
    ) WITH ORDINALITY AS t(key, content_hash, entry_id, event_id, message_key, payload, n)
),
records AS (
    INSERT INTO idempotency_records (flow, key, content_hash, content_hash_keyed, outcome,
                                     reason, journal_entry_id, result_topic, result_event_id,
                                     result_payload, subject)
    SELECT 'transfer', t.key, decode(t.content_hash, 'hex'), false, 'completed', NULL,
           t.entry_id, $7, t.event_id, convert_to(t.payload, 'UTF8'), NULL
    FROM t ORDER BY t.n
)
INSERT INTO outbox (event_id, topic, key, payload)
SELECT t.event_id, $7, convert_to(t.message_key, 'UTF8'), convert_to(t.payload, 'UTF8')
FROM t ORDER BY t.n
"""

SELECT_WALLETS = """
SELECT b.account_id, b.balance, b.held, a.currency
FROM balances b JOIN accounts a ON a.id = b.account_id
WHERE b.account_id = ANY($1::uuid[]) AND b.shard = 0 AND b.kind = 'wallet'
"""


@dataclass(frozen=True, slots=True)
class CeilingResult:
    transfers: int
    batch: int
    batches: int
    seconds: float
    warm_up: int = 0  # transfers applied before the clock started, not counted

    @property
    def per_s(self) -> float:
        return self.transfers / self.seconds

    def as_json(self) -> dict[str, object]:
        return {
            "ceiling_per_s": round(self.per_s),
            "transfers": self.transfers,
            "batch": self.batch,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "warm_up": self.warm_up,
        }


@dataclass(frozen=True, slots=True)
class _Batch:
    """One batch's parameters, every column one text (built before the clock starts)."""

    wallets: int  # distinct wallets it locks
    lock_ids: str
    entry_ids: str
    keys: str
    senders: str
    receivers: str
    amounts: str
    content_hashes: str
    event_ids: str
    message_keys: str
    payloads: str
    delta_ids: str
    shards: str
    deltas: str
    outgoing: str
    held: str


def _batches(
    balances: dict[uuid.UUID, int],
    held: dict[uuid.UUID, int],
    wallets: Sequence[uuid.UUID],
    *,
    transfers: int,
    batch: int,
    currency: str,
    rng: random.Random,
) -> list[_Batch]:
    """Valid transfers between the wallets, as batches of SQL parameters. `balances` follows
    them, for each result's balance_after (the sender's); a sender whose available balance
    (balance - held) would go below zero refuses the run before it starts."""
    out: list[_Batch] = []
    now = datetime.now(UTC)
    for start in range(0, transfers, batch):
        n = min(batch, transfers - start)
        entry_ids, keys, senders, receivers, amounts, hashes, event_ids, payloads = (
            [] for _ in range(8)
        )
        delta: Counter[uuid.UUID] = Counter()
        debit: Counter[uuid.UUID] = Counter()
        for _ in range(n):
            sender, receiver = rng.sample(wallets, 2)
            amount = rng.randint(1, AMOUNT_MAX)
            balances[sender] -= amount
            balances[receiver] += amount
            if balances[sender] < held[sender]:
                raise ValueError(f"wallet {sender} is short of funds for the transfers")
            entry_id, key, event_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            payload = transfer_completed_event(
                key, sender, receiver, amount, currency, entry_id, balances[sender], event_id, now
            ).decode()
            assert _SEPARATOR not in payload, "JSON escapes control characters"
            entry_ids.append(str(entry_id))
            keys.append(str(key))
            senders.append(str(sender))
            receivers.append(str(receiver))
            amounts.append(str(amount))
            hashes.append(rng.randbytes(32).hex())
            event_ids.append(str(event_id))
            payloads.append(payload)
            delta[sender] -= amount
            delta[receiver] += amount
            debit[sender] += amount
        touched = sorted(delta.keys() | debit.keys())
        out.append(
            _Batch(
                wallets=len(touched),
                lock_ids=",".join(map(str, touched)),
                entry_ids=",".join(entry_ids),
                keys=",".join(keys),
                senders=",".join(senders),
                receivers=",".join(receivers),
                amounts=",".join(amounts),
                content_hashes=",".join(hashes),
                event_ids=",".join(event_ids),
                message_keys=",".join(senders),  # a result is keyed like its command
                payloads=_SEPARATOR.join(payloads),
                delta_ids=",".join(map(str, touched)),
                shards=",".join(["0"] * len(touched)),
                deltas=",".join(str(delta[a]) for a in touched),
                outgoing=",".join(str(debit[a]) for a in touched),
                held=",".join(["0"] * len(touched)),
            )
        )
    return out


async def _apply(conn: asyncpg.Connection, b: _Batch, currency: str, topic: str) -> None:
    """One batch, one transaction, constant round trips: lock, post, update, answer, notify."""
    async with conn.transaction():
        clock = await conn.fetchrow(LOCK, b.lock_ids)
        assert clock is not None
        if clock["locked"] != b.wallets:
            raise ValueError(f"{b.wallets - clock['locked']} of the batch's wallets do not exist")
        day, posted_at = clock["day"], clock["posted_at"]
        await conn.execute(
            POST, b.entry_ids, b.keys, b.senders, b.receivers, b.amounts, currency, day, posted_at
        )
        await conn.execute(
            sql.APPLY_BALANCE_DELTAS,
            b.delta_ids,
            b.shards,
            b.deltas,
            b.outgoing,
            day,
            b.outgoing,  # the month's share of the debits: all of them, as the day's
            b.held,
            posted_at,
        )
        await conn.execute(
            ANSWER,
            b.keys,
            b.content_hashes,
            b.entry_ids,
            b.event_ids,
            b.message_keys,
            b.payloads,
            topic,
        )
        await conn.execute(sql.NOTIFY_OUTBOX)


def transfer_completed_event(
    transfer_id: uuid.UUID,
    sender: uuid.UUID,
    receiver: uuid.UUID,
    amount: int,
    currency: str,
    entry_id: uuid.UUID,
    balance_after: int,
    event_id: uuid.UUID,
    time: datetime,
) -> bytes:
    """The `transfer.completed` event a worker would record for a transfer the benchmarks write
    without the rules (this yardstick, and `bench api`'s bulk-loaded ledger)."""
    completed = TransferCompleted.model_construct(
        transfer_id=transfer_id,
        from_account_id=sender,
        to_account_id=receiver,
        amount=amount,
        currency=currency,
        journal_entry_id=entry_id,
        balance_after=balance_after,
    )
    return encode_event(
        TRANSFER.completed_topic,
        completed,
        event_id=str(event_id),
        source=RESULT_SOURCE,
        causation_id=str(uuid.uuid4()),
        correlation_id=str(uuid.uuid4()),
        time=time,
    )


async def measure_ceiling(
    dsn: str,
    wallets: list[uuid.UUID],
    *,
    transfers: int,
    batch: int,
    warm_up: int = 0,
    topic_prefix: str = "",
    seed: int = SEED,
) -> CeilingResult:
    """Transfers/s of `transfers` P2P transfers between the funded `wallets` (one currency), as
    set-based SQL batches of `batch`, on one connection to `dsn` (the application role will do).
    `warm_up` more transfers are applied first, untimed. Nothing else may write to these wallets
    meanwhile: the results' balance_after are worked out from their balances beforehand."""
    if len(set(wallets)) < 2:
        raise ValueError("transfers need two wallets at least")
    if transfers < 1 or warm_up < 0:
        raise ValueError("at least one transfer is measured, and warm-up is not negative")
    if not 1 <= batch <= BATCH_COMMANDS_MAX:
        raise ValueError(f"batch is 1..{BATCH_COMMANDS_MAX}")
    topic = topic_prefix + TRANSFER.completed_topic
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(SELECT_WALLETS, list(set(wallets)))
        if len(rows) != len(set(wallets)):
            raise ValueError(f"{len(set(wallets)) - len(rows)} of the wallets do not exist")
        currencies = {row["currency"].strip() for row in rows}
        if len(currencies) != 1:
            raise ValueError(f"P2P transfers need wallets of one currency, not {currencies}")
        currency = currencies.pop()
        # The postings' balance_after are PostgreSQL's; the results carry the sender's too, as
        # the real results do, so the balances follow the same transfers here (before the clock).
        balances = {row["account_id"]: row["balance"] for row in rows}
        held = {row["account_id"]: row["held"] for row in rows}
        rng = random.Random(seed)
        ordered = sorted(set(wallets))  # the seed alone decides the transfers
        warm, timed = (
            _batches(balances, held, ordered, transfers=n, batch=batch, currency=currency, rng=rng)
            for n in (warm_up, transfers)
        )
        for b in warm:
            await _apply(conn, b, currency, topic)
        started = time.perf_counter()
        for b in timed:
            await _apply(conn, b, currency, topic)
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return CeilingResult(transfers, batch, len(timed), seconds, warm_up)


async def ceiling_for(
    dsn: str,
    wallets: list[uuid.UUID],
    transfers: int,
    batch: int,
    *,
    topic_prefix: str = "",
) -> float:
    """The ceiling's transfers/s on a benchmark's own database and wallets, in the same run
    (after its measurement, with nothing else writing): its `ceiling_per_s`."""
    result = await measure_ceiling(
        dsn,
        wallets,
        transfers=transfers,
        batch=batch,
        warm_up=min(WARM_UP, transfers),
        topic_prefix=topic_prefix,
    )
    return result.per_s


async def run_ceiling_bench(
    owner_url: str,
    app_url: str,
    *,
    wallets: int,
    transfers: int,
    batch: int,
    database: str = DATABASE,
) -> CeilingResult:
    """On a database of its own (created, funded through the real LedgerWriter, dropped)."""
    # Imported here: bench ledger and bench e2e import this module for `ceiling_for`.
    from ledgerflow.cli.bench_e2e import _fund_wallets  # noqa: PLC0415
    from ledgerflow.cli.bench_ledger import (  # noqa: PLC0415
        create_bench_database,
        drop_database,
        settle_tables,
        with_database,
    )

    owner_bench_url = await create_bench_database(owner_url, database)
    try:
        app_bench_url = with_database(app_url, database)
        ids, _ = await _fund_wallets(app_bench_url, wallets, "")
        await settle_tables(owner_bench_url)
        return await measure_ceiling(
            app_bench_url, ids, transfers=transfers, batch=batch, warm_up=WARM_UP
        )
    finally:
        await drop_database(owner_url, database)


def ceiling(
    transfers: int = typer.Option(20_000, min=1, max=10_000_000, help="Transfers to measure."),
    batch: int = typer.Option(BATCH, min=1, max=BATCH_COMMANDS_MAX, help="Transfers per batch."),
    wallets: int = typer.Option(1_000, min=2, max=1_000_000, help="Wallets they spread over."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    database: str = typer.Option(DATABASE, help="The database to create, use and drop."),
) -> None:
    """The yardstick: transfers/s of the same writes as set-based SQL, one transaction a batch."""
    # Imported here: cli/bench.py registers this command and imports this module.
    from ledgerflow.cli.bench import machine  # noqa: PLC0415

    settings = Settings()
    result = asyncio.run(
        run_ceiling_bench(
            settings.migration_database_url.get_secret_value(),
            settings.database_url.get_secret_value(),
            wallets=wallets,
            transfers=transfers,
            batch=batch,
            database=database,
        )
    )
    out = result.as_json() | {"wallets": wallets, "machine": machine()}
    if as_json:
        print(json.dumps(out))
        return
    console = Console()
    table = Table("transfers", "batch", "batches", "wallets", "seconds", "transfers/s")
    table.add_row(
        f"{result.transfers:,}",
        str(result.batch),
        str(result.batches),
        f"{wallets:,}",
        f"{result.seconds:.2f}",
        f"{result.per_s:,.0f}",
    )
    console.print(table)
    console.print(f"machine: {machine()}")
