"""`ledgerflow bench api`: the read API under concurrent readers while the workers write.

1. A ledger of its own (`ledgerflow_bench_api`, recreated each run, dropped afterwards unless
   kept): wallets opened and funded through `LedgerWriter` (customers, owners' subjects, PII,
   balances, records), then the transfers, spread over a year of history (`--days`) so that
   postings carry the posted_at, balance_after and outgoing days such traffic leaves, and
   `ledgerflow audit` passes. `--build writer` applies every transfer through
   `LedgerWriter.apply` in batches, the writer's clock stepped per batch (5.5 minutes for the
   default million entries on 2 cores); `--build sql` (the default) bulk-loads them by binary
   COPY with every trigger on and derives the balances from the postings set-based. One wallet
   in a hundred is busy: it takes part in a fifth of the transfers (hundreds of entries: pages to
   follow); the others in a few dozen.
2. `ledgerflow api` (authentication on: `ledger:read` tokens of a throwaway issuer, or with
   `--as-owners` each wallet's owner's token), with `worker transfer` processes and the relay
   consuming transfers published through Kafka at `--write-rate`, signed as `bench e2e` signs
   them.
3. Concurrent clients (httpx, one keep-alive connection each) read for the measured seconds,
   after a warm-up: a wallet, a page of its history (sometimes the next one, by its cursor), a
   calendar month's statement. Closed loop by default (each client sends its next request when
   the last is answered: the most the machine serves); `--read-rate` offers a fixed rate (open
   loop, latency counted from each request's due time). Latency is the client's (request to
   body read); the API's own histogram (its /metrics) gives the server's p99 bucket beside it.
   CPU seconds over the window come from /proc, per process: the API's, per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer

from ledgerflow.cli.bench_ceiling import transfer_completed_event
from ledgerflow.cli.bench_e2e import owner_of
from ledgerflow.cli.bench_ledger import create_bench_database, drop_database, with_database
from ledgerflow.cli.bench_measure import (
    Profiler,
    cpu_by_group,
    cpu_snapshot,
    machine_cpu_s,
    py_spy_path,
    runqueue_wait_s,
)
from ledgerflow.contracts.codec import KafkaRecord, encode_command
from ledgerflow.contracts.topics import TRANSFER
from ledgerflow.harness.identity import Issuer, Signer
from ledgerflow.harness.processes import ManagedProcess, ledgerflow_env, start_process
from ledgerflow.ledger_db import sql
from ledgerflow.ledger_db.apply import (
    BATCH_COMMANDS_MAX,
    Incoming,
    LedgerWriter,
    OutcomeKind,
)
from ledgerflow.ledger_db.rules import TierLimits
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import cashin, onboarding, parsed, transfer, wallet_of
from ledgerflow.workers.kafka_io import idempotent_producer
from ledgerflow.workers.topics import ensure_topics, topic_specs

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

DATABASE = "ledgerflow_bench_api"
FUNDS = 10**9  # per wallet: no transfer of 1..100 is ever refused for want of money
AMOUNT_MAX = 100
BUSY_WALLETS = 0.01  # share of wallets that are busy
BUSY_LEGS = 0.2  # share of transfer legs (sender or receiver) drawn from the busy wallets
SETUP_BATCH = BATCH_COMMANDS_MAX  # onboardings and cash-ins per batch
STREAMS = 2  # concurrent transfer batches while building, on disjoint wallets
BULK_CHUNK = 50_000  # transfers per transaction of the bulk load
# Senders of the background writes (and readers with --as-owners): a session token each, signed
# before the clock starts (RSA signing costs ~1 ms, too much to do in the measured loop).
ACTIVE_USERS = 2_000
PAGE_LIMIT = 50
# The mix: the share of each kind of read; a history page is followed by the next (older) page
# with this probability when it has one.
MIX = (("wallet", 0.45), ("entries", 0.40), ("statement", 0.15))
FOLLOW_CURSOR = 0.5
BUSY_READS = 0.3  # share of history and statement reads of a busy wallet
ENDPOINTS = ("wallet", "entries", "entries (next page)", "statement")
ROUTES = {
    "wallet": "/v1/wallets/{account_id}",
    "entries": "/v1/wallets/{account_id}/entries",
    "entries (next page)": "/v1/wallets/{account_id}/entries",
    "statement": "/v1/wallets/{account_id}/statement",
}
# What the window's CPU is counted against: this benchmark's processes and the stack's.
_OWN_PROCESSES = frozenset(
    {"api", "worker transfer", "relay", "bench client", "postgres", "kafka (java)", "py-spy"}
)
TARGET_P99_MS = 20.0  # for a wallet read and a history page
TARGET_ENDPOINTS = ("wallet", "entries", "entries (next page)")
REQUEST_TIMEOUT_S = 10.0
SEED = 17


@dataclass(slots=True)
class _SteppedClock:
    """The writer's clock (`LedgerWriter.clock`): the instant the next batch is posted at."""

    at: datetime

    def __call__(self) -> datetime | None:
        return self.at


@dataclass(frozen=True, slots=True)
class Ledger:
    database: str
    owner_url: str  # of the bench database
    wallets: list[uuid.UUID]
    busy: list[uuid.UUID]
    owners: dict[uuid.UUID, str]  # wallet -> its owner's subject
    entries: int
    postings: int
    seconds: float
    transfer_seconds: float
    transfers: int
    history_start: datetime
    history_end: datetime
    method: str

    def as_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "database": self.database,
            "wallets": len(self.wallets),
            "busy_wallets": len(self.busy),
            "entries": self.entries,
            "postings": self.postings,
            "seconds": round(self.seconds, 1),
            "transfers": self.transfers,
            "transfers_per_s": round(self.transfers / self.transfer_seconds)
            if self.transfer_seconds
            else None,
            "history": [self.history_start.isoformat(), self.history_end.isoformat()],
        }


# Build methods (`--build`): the transfers through the real write path, or bulk-loaded.
BUILD_WRITER = "writer"
BUILD_SQL = "sql"
BUILD_METHODS = {
    BUILD_WRITER: "LedgerWriter: every transfer through the batched apply path, "
    f"{STREAMS} concurrent streams, the writer's clock stepped per batch",
    BUILD_SQL: "bulk SQL: wallets opened and funded by LedgerWriter, transfers bulk-loaded "
    "(binary COPY of entries, postings and records, triggers on), balances and outgoing totals "
    "derived from the postings set-based",
}


async def build_ledger(
    owner_url: str,
    app_url: str,
    *,
    wallets: int,
    entries: int,
    batch: int,
    days: int,
    method: str,
    progress: Callable[[str], None],
    database: str = DATABASE,
    seed: int = SEED,
) -> Ledger:
    """A fresh database with `wallets` funded wallets and `entries` journal entries in all (one
    cash-in per wallet, the rest transfers), posted over the last `days` days."""
    assert 2 <= wallets < entries, "a cash-in per wallet, and transfers"
    assert 0 < batch <= BATCH_COMMANDS_MAX, "batches are bounded"
    assert method in BUILD_METHODS, method
    started = time.perf_counter()
    bench_owner_url = await create_bench_database(owner_url, database)
    bench_app_url = with_database(app_url, database)
    history_end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    history_start = history_end - timedelta(days=days)
    pool = await create_pool(bench_app_url, size_max=STREAMS)
    try:
        # The cash-ins are posted at the history's start, the transfers after them.
        writer = LedgerWriter(pool, {"basic": TierLimits()}, clock=_SteppedClock(history_start))
        people = [onboarding() for _ in range(wallets)]
        ids = [wallet_of(p) for p in people]
        owners = {wallet_of(p): owner_of(p) for p in people}
        for start in range(0, wallets, SETUP_BATCH):
            chunk = people[start : start + SETUP_BATCH]
            await _apply_all(writer, [Incoming(parsed(p), subject=owner_of(p)) for p in chunk])
            await _apply_all(writer, [Incoming(parsed(cashin(wallet_of(p), FUNDS))) for p in chunk])
        progress(f"{wallets:,} wallets opened and funded in {time.perf_counter() - started:.0f}s")
        busy = ids[: max(1, round(wallets * BUSY_WALLETS))]
        history = _History(history_start, history_end, entries - wallets, progress)
        if method == BUILD_WRITER:
            await _writer_transfers(pool, ids, busy, history, batch, seed)
        else:
            conn = await asyncpg.connect(bench_app_url)
            try:
                await _bulk_transfers(conn, ids, busy, history, seed)
                # Statistics of the loaded tables first (the owner's right), so that the
                # aggregates are planned as the hash joins they are.
                owner = await asyncpg.connect(bench_owner_url)
                try:
                    await owner.execute("ANALYZE journal_entries, postings, balances")
                finally:
                    await owner.close()
                await conn.execute(DERIVE_BALANCES)
            finally:
                await conn.close()
        transfer_seconds = time.perf_counter() - history.started
    finally:
        await pool.close()
    owner = await asyncpg.connect(bench_owner_url)
    try:
        # The setup's result events are never published: the relay starts from an empty outbox.
        await owner.execute("TRUNCATE outbox")
        await owner.execute("VACUUM ANALYZE")
        counted = await owner.fetchrow(
            "SELECT (SELECT count(*) FROM journal_entries) AS entries,"
            " (SELECT count(*) FROM postings) AS postings"
        )
        assert counted is not None
    finally:
        await owner.close()
    return Ledger(
        database,
        bench_owner_url,
        ids,
        busy,
        owners,
        int(counted["entries"]),
        int(counted["postings"]),
        time.perf_counter() - started,
        transfer_seconds,
        history.transfers,
        history_start,
        history_end,
        BUILD_METHODS[method],
    )


@dataclass(slots=True)
class _History:
    """The transfers to build: how many, over which span, and how far along."""

    start: datetime
    end: datetime
    transfers: int
    progress: Callable[[str], None]
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def at(self, fraction: float) -> datetime:
        return self.start + (self.end - self.start) * fraction

    def advance(self, n: int) -> None:
        step = max(1, self.transfers // 10)
        before, self.done = self.done, self.done + n
        if before // step != self.done // step:
            per_s = self.done / (time.perf_counter() - self.started)
            self.progress(f"{self.done:,}/{self.transfers:,} transfers, {per_s:,.0f}/s")


def _legs(
    wallets: Sequence[uuid.UUID], busy: Sequence[uuid.UUID], rng: random.Random
) -> Callable[[], tuple[uuid.UUID, uuid.UUID]]:
    """A transfer's sender and receiver: each a busy wallet with probability BUSY_LEGS."""

    def leg() -> uuid.UUID:
        return rng.choice(busy) if rng.random() < BUSY_LEGS else rng.choice(wallets)

    def pair() -> tuple[uuid.UUID, uuid.UUID]:
        sender = leg()
        receiver = leg()
        while receiver == sender:
            receiver = leg()
        return sender, receiver

    return pair


async def _writer_transfers(
    pool: asyncpg.Pool,
    ids: list[uuid.UUID],
    busy: list[uuid.UUID],
    history: _History,
    batch: int,
    seed: int,
) -> None:
    """The transfers through `LedgerWriter.apply`, in batches, each posted at its step of the
    history (the writer's clock)."""
    batches = -(-history.transfers // batch)

    async def stream(number: int) -> None:
        """Every STREAMS-th batch, among every STREAMS-th wallet: the streams lock disjoint
        wallets, so one decides in Python while PostgreSQL writes the other's batch."""
        clock = _SteppedClock(history.start)
        writer = LedgerWriter(pool, {"basic": TierLimits()}, clock=clock)
        rng = random.Random(seed + number)
        pair = _legs(ids[number::STREAMS], busy[number::STREAMS] or busy, rng)
        for index in range(number, batches, STREAMS):
            clock.at = history.at((index + 1) / batches)
            commands = []
            for _ in range(min(batch, history.transfers - index * batch)):
                sender, receiver = pair()
                amount = rng.randint(1, AMOUNT_MAX)
                commands.append(Incoming(parsed(transfer(sender, receiver, amount))))
            await _apply_all(writer, commands)
            history.advance(len(commands))

    await asyncio.gather(*(stream(i) for i in range(STREAMS)))


async def _bulk_transfers(
    conn: asyncpg.Connection,
    ids: list[uuid.UUID],
    busy: list[uuid.UUID],
    history: _History,
    seed: int,
) -> None:
    """The transfers as the write path would have left them, bulk-loaded: per chunk, one
    transaction of binary COPYs into journal_entries, postings and idempotency_records (the
    double-entry triggers check every statement), each transfer at its own instant of the
    history, each posting with the wallet's running balance after it, each record with the
    result event the writer would have stored (contracts' encoder, `transfer.completed`).
    Every wallet's balance, latest posting time and outgoing day/month totals are derived from
    the postings afterwards, by one set-based UPDATE (DERIVE_BALANCES), so that they agree with
    the journal by construction. Content hashes are random (no command was parsed): a replayed
    command would be answered id_conflict, which no read here involves."""
    rng = random.Random(seed)
    pair = _legs(ids, busy, rng)
    balances: dict[uuid.UUID, int] = {
        r["account_id"]: r["balance"]
        for r in await conn.fetch("SELECT account_id, balance FROM balances WHERE kind = 'wallet'")
    }
    currency = "EUR"
    topic = TRANSFER.completed_topic
    for first in range(0, history.transfers, BULK_CHUNK):
        entries, postings, records = [], [], []
        for n in range(first, min(first + BULK_CHUNK, history.transfers)):
            posted_at = history.at((n + 1) / history.transfers)
            sender, receiver = pair()
            amount = rng.randint(1, AMOUNT_MAX)
            balances[sender] -= amount
            balances[receiver] += amount
            entry_id, key, event_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            entries.append((entry_id, TRANSFER.name, key, posted_at.date()))
            postings.append((entry_id, 0, sender, currency, -amount, posted_at, balances[sender]))
            postings.append(
                (entry_id, 1, receiver, currency, amount, posted_at, balances[receiver])
            )
            payload = transfer_completed_event(
                key,
                sender,
                receiver,
                amount,
                currency,
                entry_id,
                balances[sender],
                event_id,
                posted_at,
            )
            records.append(
                (
                    TRANSFER.name,
                    key,
                    rng.randbytes(32),
                    False,
                    "completed",
                    None,
                    entry_id,
                    topic,
                    event_id,
                    payload,
                    None,
                )
            )
        async with conn.transaction():
            await conn.copy_records_to_table(
                "journal_entries", records=entries, columns=list(sql.ENTRIES.columns)
            )
            await conn.copy_records_to_table(
                "postings", records=postings, columns=list(sql.POSTINGS.columns)
            )
            await conn.copy_records_to_table(
                "idempotency_records",
                records=records,
                columns=list(sql.IDEMPOTENCY_RECORDS.columns),
            )
        history.advance(len(entries))


# Every wallet's balance row from its transfer postings (the bulk load's): the balance moves by
# their sum, the latest posting time is theirs, and the outgoing totals are those of the wallet's
# latest day with a debit (the entry's out_day, the sender's) and of that day's month.
DERIVE_BALANCES = """
WITH per_day AS MATERIALIZED (
    SELECT p.account_id, e.out_day AS day, sum(p.amount)::bigint AS delta,
           coalesce(sum(-p.amount) FILTER (WHERE p.amount < 0), 0)::bigint AS debits,
           max(p.posted_at) AS last_posted_at
    FROM postings p JOIN journal_entries e ON e.id = p.entry_id
    WHERE e.flow = 'transfer'
    GROUP BY p.account_id, e.out_day
),
per_wallet AS (
    SELECT account_id, sum(delta)::bigint AS delta, max(last_posted_at) AS last_posted_at,
           max(day) FILTER (WHERE debits > 0) AS out_day
    FROM per_day GROUP BY account_id
),
totals AS (
    SELECT w.account_id, w.delta, w.last_posted_at, w.out_day,
           sum(d.debits) FILTER (WHERE d.day = w.out_day)::bigint AS day_total,
           sum(d.debits) FILTER (
               WHERE date_trunc('month', d.day) = date_trunc('month', w.out_day)
           )::bigint AS month_total
    FROM per_wallet w JOIN per_day d ON d.account_id = w.account_id
    GROUP BY w.account_id, w.delta, w.last_posted_at, w.out_day
)
UPDATE balances b SET
    balance = b.balance + t.delta,
    last_posted_at = greatest(b.last_posted_at, t.last_posted_at),
    out_day = coalesce(t.out_day, b.out_day),
    out_day_total = coalesce(t.day_total, b.out_day_total),
    out_month = coalesce(date_trunc('month', t.out_day)::date, b.out_month),
    out_month_total = coalesce(t.month_total, b.out_month_total)
FROM totals t
WHERE b.account_id = t.account_id AND b.shard = 0 AND b.kind = 'wallet'
"""


async def load_ledger(owner_url: str, database: str = DATABASE) -> Ledger | None:
    """The ledger an earlier run kept (`--keep`), or None when there is none."""
    conn = await asyncpg.connect(owner_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    finally:
        await conn.close()
    if not exists:
        return None
    bench_owner_url = with_database(owner_url, database)
    conn = await asyncpg.connect(bench_owner_url)
    try:
        rows = await conn.fetch(
            "SELECT a.id, c.subject, count(p.*) AS postings FROM accounts a"
            " JOIN customers c ON c.id = a.customer_id"
            " LEFT JOIN postings p ON p.account_id = a.id"
            " WHERE a.kind = 'wallet' GROUP BY a.id, c.subject ORDER BY a.id"
        )
        counted = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM journal_entries) AS entries,"
            " (SELECT count(*) FROM postings) AS postings,"
            " (SELECT count(*) FROM journal_entries WHERE flow = 'transfer') AS transfers,"
            " (SELECT min(posted_at) FROM postings) AS first,"
            " (SELECT max(posted_at) FROM postings) AS last"
        )
        assert counted is not None
    finally:
        await conn.close()
    if not rows:
        return None
    by_postings = sorted(rows, key=lambda r: -int(r["postings"]))
    return Ledger(
        database,
        bench_owner_url,
        [r["id"] for r in rows],
        [r["id"] for r in by_postings[: max(1, round(len(rows) * BUSY_WALLETS))]],
        {r["id"]: r["subject"] for r in rows},
        int(counted["entries"]),
        int(counted["postings"]),
        0.0,
        0.0,
        int(counted["transfers"]),
        counted["first"],
        counted["last"],
        "reused: the database an earlier --keep run built",
    )


async def _apply_all(writer: LedgerWriter, batch: Sequence[Incoming]) -> None:
    outcomes = await writer.apply(batch)
    refused = [o for o in outcomes if o.kind is not OutcomeKind.COMPLETED]
    if refused:
        raise RuntimeError(f"{len(refused)} setup commands not completed, e.g. {refused[0]}")


# --- measuring -----------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank of an ascending list (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def request_histogram(metrics_text: str) -> dict[str, dict[float, float]]:
    """The API's latency histogram: route -> upper bound (s) -> cumulative count."""
    buckets: dict[str, dict[float, float]] = defaultdict(dict)
    for line in metrics_text.splitlines():
        if not line.startswith("ledgerflow_api_request_seconds_bucket{"):
            continue
        labels_text, _, value = line.rpartition(" ")
        labels = dict(_LABEL.findall(labels_text))
        bound = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        buckets[labels["route"]][bound] = buckets[labels["route"]].get(bound, 0.0) + float(value)
    return buckets


def server_p99_bound_ms(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]], route: str
) -> float | None:
    """The histogram bucket (ms) the server-side p99 of `route` falls in, over the window."""
    counts = {
        bound: total - before.get(route, {}).get(bound, 0.0)
        for bound, total in after.get(route, {}).items()
    }
    if not counts or counts[float("inf")] <= 0:
        return None
    needed = 0.99 * counts[float("inf")]
    for bound in sorted(counts):
        if counts[bound] >= needed:
            return bound * 1000
    return None


@dataclass(slots=True)
class Samples:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # no answer
    non_2xx: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )


@dataclass(slots=True)
class ReadLoad:
    """What the clients read: wallets, their owners' tokens, the statement months."""

    wallets: list[uuid.UUID]
    busy: list[uuid.UUID]
    months: list[tuple[datetime, datetime]]
    tokens: dict[uuid.UUID, str]  # per wallet (as owners), or empty
    reader_tokens: list[str]  # ledger:read, one per client


def statement_months(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The calendar months wholly inside the history; its last 30 days if none is."""
    months = []
    first = datetime(start.year, start.month, 1, tzinfo=UTC)
    while True:
        first = (first + timedelta(days=32)).replace(day=1) if first < start else first
        following = (first + timedelta(days=32)).replace(day=1)
        if following > end:
            break
        months.append((first, following))
        first = following
    return months or [(end - timedelta(days=30), end)]


async def _client(
    number: int,
    base_url: str,
    load: ReadLoad,
    until: Callable[[], bool],
    samples: Callable[[], Samples],
    interval_s: float | None,
) -> None:
    """One user on one keep-alive connection: as fast as answers come (closed loop), or one
    request every `interval_s` (open loop: a late answer delays the next request, and latency
    counts from the request's due time, so falling behind shows)."""
    rng = random.Random(SEED * 1_000 + number)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    due = time.perf_counter() + rng.random() * (interval_s or 0.0)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as client:

        async def get(endpoint: str, wallet: uuid.UUID, path: str, **params: str) -> bytes | None:
            nonlocal due
            token = load.tokens.get(wallet) or load.reader_tokens[number % len(load.reader_tokens)]
            if interval_s is not None:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                started, due = due, due + interval_s
            else:
                started = time.perf_counter()
            try:
                answer = await client.get(path, params=params, headers={"authorization": token})
            except httpx.HTTPError:
                samples().errors[endpoint] += 1
                return None
            elapsed_ms = (time.perf_counter() - started) * 1000
            record = samples()
            if answer.is_success:
                record.latencies_ms[endpoint].append(elapsed_ms)
                return answer.content
            record.non_2xx[endpoint][answer.status_code] += 1
            return None

        kinds, weights = [k for k, _ in MIX], [w for _, w in MIX]
        while not until():
            kind = rng.choices(kinds, weights)[0]
            wallet = rng.choice(load.wallets)
            if kind == "wallet":
                await get("wallet", wallet, f"/v1/wallets/{wallet}")
                continue
            if rng.random() < BUSY_READS:
                wallet = rng.choice(load.busy)
            if kind == "entries":
                path = f"/v1/wallets/{wallet}/entries"
                body = await get("entries", wallet, path, limit=str(PAGE_LIMIT))
                cursor = orjson.loads(body).get("next_cursor") if body else None
                while cursor and rng.random() < FOLLOW_CURSOR and not until():
                    body = await get(
                        "entries (next page)", wallet, path, limit=str(PAGE_LIMIT), cursor=cursor
                    )
                    cursor = orjson.loads(body).get("next_cursor") if body else None
            else:
                start, end = rng.choice(load.months)
                await get(
                    "statement",
                    wallet,
                    f"/v1/wallets/{wallet}/statement",
                    **{"from": start.isoformat(), "to": end.isoformat()},
                )


@dataclass(slots=True)
class _Publisher:
    """Publishes prepared transfer records at a steady rate until stopped."""

    producer: AIOKafkaProducer
    records: list[KafkaRecord]
    rate: float
    sent: int = 0
    stopped: bool = False

    async def run(self) -> None:
        started = time.monotonic()
        while not self.stopped and self.sent < len(self.records):
            due = min(len(self.records), int((time.monotonic() - started) * self.rate))
            for rec in self.records[self.sent : due]:
                await self.producer.send(
                    rec.topic, rec.value, key=rec.key, headers=list(rec.headers)
                )
            self.sent = max(self.sent, due)
            await asyncio.sleep(0.01)
        if self.sent >= len(self.records):
            raise RuntimeError("ran out of prepared transfers: raise the margin")


@dataclass(frozen=True, slots=True)
class EndpointResult:
    endpoint: str
    count: int
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non_2xx: dict[int, int]
    server_p99_le_ms: float | None

    def as_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "per_s": round(self.per_s, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(self.max_ms, 2),
            "errors": self.errors,
            "non_2xx": {str(k): v for k, v in sorted(self.non_2xx.items())},
            "server_p99_le_ms": self.server_p99_le_ms,
        }


@dataclass(frozen=True, slots=True)
class ApiBenchResult:
    ledger: Ledger
    clients: int
    read_rate: float | None  # offered requests/s in all (open loop); None: closed loop
    seconds: float  # measured, from the first request to the last answer
    as_owners: bool
    endpoints: list[EndpointResult]
    write_rate_offered: float
    writes_published: int
    transfers_written: int  # journal entries of transfers committed in the window
    write_seconds: float  # the window, by the database's clock
    api_cpu_s: float
    api_wait_s: float  # runnable, waiting for a CPU, over the window
    cpu_s: dict[str, float]  # per process kind, over the window
    machine_busy: float  # share of all cores busy over the window
    profile: str | None = None

    @property
    def requests(self) -> int:
        return sum(e.count for e in self.endpoints)

    @property
    def others_cpu_s(self) -> float:
        """CPU used meanwhile by processes that are not this benchmark's nor the stack's: the
        measurement's noise (another test session on the machine shows here)."""
        return sum(v for k, v in self.cpu_s.items() if k not in _OWN_PROCESSES)

    @property
    def write_rate(self) -> float:
        return self.transfers_written / self.write_seconds if self.write_seconds else 0.0

    def target_met(self) -> bool:
        return all(
            e.p99_ms <= TARGET_P99_MS for e in self.endpoints if e.endpoint in TARGET_ENDPOINTS
        )

    def as_json(self) -> dict[str, object]:
        requests = self.requests
        return {
            "build": self.ledger.as_json(),
            "load": {
                "clients": self.clients,
                "read_rate_offered_per_s": self.read_rate,
                "seconds": round(self.seconds, 2),
                "tokens": "wallet owners" if self.as_owners else "ledger:read",
                "mix": dict(MIX),
                "follow_cursor": FOLLOW_CURSOR,
                "page_limit": PAGE_LIMIT,
            },
            "endpoints": {e.endpoint: e.as_json() for e in self.endpoints},
            "overall": {
                "requests": requests,
                "per_s": round(requests / self.seconds, 1),
                "errors": sum(e.errors for e in self.endpoints),
                "non_2xx": sum(sum(e.non_2xx.values()) for e in self.endpoints),
            },
            "writes": {
                "offered_per_s": self.write_rate_offered,
                "published": self.writes_published,
                "transfers_written": self.transfers_written,
                "achieved_per_s": round(self.write_rate, 1),
            },
            "cpu": {
                "api_seconds": round(self.api_cpu_s, 2),
                "api_ms_per_request": round(1000 * self.api_cpu_s / requests, 3)
                if requests
                else None,
                "api_cores": round(self.api_cpu_s / self.seconds, 2),
                "api_runqueue_wait_seconds": round(self.api_wait_s, 2),
                "api_runqueue_wait_ms_per_request": round(1000 * self.api_wait_s / requests, 3)
                if requests
                else None,
                "seconds_by_process": {k: round(v, 2) for k, v in self.cpu_s.items()},
                "machine_busy": round(self.machine_busy, 3),
                "others_seconds": round(self.others_cpu_s, 2),
            },
            "target": {
                "p99_ms_max": TARGET_P99_MS,
                "endpoints": list(TARGET_ENDPOINTS),
                "met": self.target_met(),
            },
            "profile": self.profile,
        }


async def run_api_bench(
    owner_url: str,
    app_url: str,
    reader_url: str,
    bootstrap_servers: str,
    *,
    wallets: int,
    entries: int,
    batch: int,
    days: int,
    build: str,
    clients: int,
    read_rate: float | None,
    seconds: float,
    warm_up_s: float,
    write_rate: float,
    workers: int,
    as_owners: bool,
    keep: bool,
    reuse: bool,
    profile: Path | None,
    progress: Callable[[str], None],
) -> ApiBenchResult:
    ledger = await load_ledger(owner_url) if reuse else None
    if ledger is not None:
        progress(
            f"reusing {ledger.database}: {ledger.entries:,} entries, {ledger.postings:,} postings"
        )
    else:
        try:
            ledger = await build_ledger(
                owner_url,
                app_url,
                wallets=wallets,
                entries=entries,
                batch=batch,
                days=days,
                method=build,
                progress=progress,
            )
        except BaseException:
            if not keep:
                await drop_database(owner_url, DATABASE)
            raise
        progress(
            f"ledger built in {ledger.seconds:.0f}s: {ledger.entries:,} entries, "
            f"{ledger.postings:,} postings ({ledger.transfers / ledger.transfer_seconds:,.0f} "
            "transfers/s)"
        )
    prefix = f"benchapi{uuid.uuid4().hex[:8]}."
    processes: list[ManagedProcess] = []
    try:
        await ensure_topics(bootstrap_servers, topic_specs(prefix, 6, 6, 1), 1)
        log_dir = Path(tempfile.mkdtemp(prefix="ledgerflow-bench-api-"))
        identity = Issuer()
        rng = random.Random(SEED)
        active = rng.sample(ledger.wallets, min(ACTIVE_USERS, len(ledger.wallets)))
        signer = Signer(identity, owners={w: ledger.owners[w] for w in active}, ttl_s=3_600)
        env = ledgerflow_env(
            with_database(app_url, ledger.database),
            bootstrap_servers,
            prefix,
            read_database_url=with_database(reader_url, ledger.database),
            basic_single_amount_max=str(10**15),
            basic_balance_max=str(10**15),
            **identity.settings(log_dir / "jwks.json"),
        )
        starting = [["worker", "transfer"]] * workers + [["relay"], ["api"]]
        processes.extend(
            await asyncio.gather(
                *(asyncio.to_thread(start_process, args, env, log_dir) for args in starting)
            )
        )
        api = processes[-1]
        # Background writes: transfers from the active users to anyone, signed as they would be.
        total_s = warm_up_s + seconds + 10
        records = []
        for _ in range(int(write_rate * total_s) + 1):
            sender = rng.choice(active)
            receiver = rng.choice(ledger.wallets)
            while receiver == sender:
                receiver = rng.choice(ledger.wallets)
            command = transfer(sender, receiver, rng.randint(1, AMOUNT_MAX))
            records.append(
                encode_command(
                    TRANSFER,
                    command,
                    topic_prefix=prefix,
                    authorization=signer.authorization(command),
                )
            )
        readers = active if as_owners else ledger.wallets
        load = ReadLoad(
            wallets=readers,
            busy=[w for w in ledger.busy if not as_owners or w in signer.owners]
            or readers[: max(1, len(readers) // 100)],
            months=statement_months(ledger.history_start, ledger.history_end),
            tokens={w: identity.bearer(ledger.owners[w], ttl_s=3_600) for w in readers}
            if as_owners
            else {},
            reader_tokens=[
                identity.bearer(f"bench-reader-{i}", scope="ledger:read", ttl_s=3_600)
                for i in range(clients)
            ],
        )
        progress(
            f"api, {workers} transfer workers and the relay up; {len(records):,} transfers "
            f"signed for {write_rate:,.0f}/s"
        )
        producer = idempotent_producer(bootstrap_servers, "ledgerflow-bench")
        await producer.start()
        owner = await asyncpg.connect(ledger.owner_url)
        publisher = _Publisher(producer, records, write_rate)
        publishing = asyncio.create_task(publisher.run())
        try:
            base_url = f"http://127.0.0.1:{api.port}"
            interval_s = clients / read_rate if read_rate else None
            current = Samples()  # the warm-up's, dropped
            deadline = float("inf")  # until the window is over, set once it starts

            def until() -> bool:
                if publishing.done():
                    publishing.result()  # raises what stopped it
                return time.monotonic() >= deadline

            runs = [
                asyncio.create_task(_client(i, base_url, load, until, lambda: current, interval_s))
                for i in range(clients)
            ]
            await asyncio.sleep(warm_up_s)
            # The measured window: samples, CPU and the database clock from here on.
            _, api_metrics_before = await asyncio.to_thread(api.get, "/metrics")
            cpu_before = cpu_snapshot()
            api_wait_before = runqueue_wait_s(api.process.pid)
            busy_before, total_before = machine_cpu_s()
            written_from = await owner.fetchval("SELECT clock_timestamp()")
            published_before = publisher.sent
            measured = Samples()
            current = measured
            window_start = time.perf_counter()
            deadline = time.monotonic() + seconds
            spy = None
            if profile is not None and py_spy_path() is not None:
                spy = Profiler(api.process.pid, profile)
            await asyncio.gather(*runs)
            window_s = time.perf_counter() - window_start
            written_to = await owner.fetchval("SELECT clock_timestamp()")
            published = publisher.sent - published_before
            busy_after, total_after = machine_cpu_s()
            api_wait = runqueue_wait_s(api.process.pid) - api_wait_before
            roles = {p.process.pid: " ".join(p.args) for p in processes}
            cpu_s = cpu_by_group(cpu_before, cpu_snapshot(), roles | {os.getpid(): "bench client"})
            _, api_metrics_after = await asyncio.to_thread(api.get, "/metrics")
            if spy is not None:
                await asyncio.to_thread(spy.stop)
        finally:
            publisher.stopped = True
            with contextlib.suppress(RuntimeError):
                await publishing
            await producer.stop()
        await asyncio.sleep(1)  # the last batches commit
        transfers_written = await owner.fetchval(
            "SELECT count(*) FROM journal_entries WHERE flow = 'transfer'"
            " AND created_at >= $1 AND created_at < $2",
            written_from,
            written_to,
        )
        await owner.close()
        before, after = request_histogram(api_metrics_before), request_histogram(api_metrics_after)
        results = []
        for endpoint in ENDPOINTS:
            ordered = sorted(measured.latencies_ms.get(endpoint, []))
            results.append(
                EndpointResult(
                    endpoint,
                    len(ordered),
                    len(ordered) / window_s,
                    percentile(ordered, 0.50),
                    percentile(ordered, 0.95),
                    percentile(ordered, 0.99),
                    ordered[-1] if ordered else 0.0,
                    measured.errors.get(endpoint, 0),
                    dict(measured.non_2xx.get(endpoint, {})),
                    server_p99_bound_ms(before, after, ROUTES[endpoint])
                    if not endpoint.startswith("entries")
                    else server_p99_bound_ms(before, after, ROUTES["entries"]),
                )
            )
        return ApiBenchResult(
            ledger,
            clients,
            read_rate,
            window_s,
            as_owners,
            results,
            write_rate,
            published,
            int(transfers_written),
            (written_to - written_from).total_seconds(),
            cpu_s.get("api", 0.0),
            api_wait,
            cpu_s,
            (busy_after - busy_before) / (total_after - total_before),
            str(profile) if spy is not None else None,
        )
    finally:
        for process in processes:
            process.stop()
        # Imported here: testkit.plugin imports pytest, which the container image does not ship.
        from ledgerflow.testkit.plugin import delete_topics_with_prefix  # noqa: PLC0415

        await delete_topics_with_prefix(bootstrap_servers, prefix)
        if not keep:
            await drop_database(owner_url, ledger.database)
