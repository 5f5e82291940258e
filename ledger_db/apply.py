"""The batched apply path: a batch of parsed commands in, one outcome per command out.

One transaction per batch (see `unit_of_work`), a constant number of round trips per batch:
read the idempotency records and lock the wallets (ascending id), decide every command in order
with the pure rules, then write customers, journal, postings, balances, idempotency records and
outbox rows set-based with `unnest`. Business rejections are outcomes, not errors.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from asyncpg.pgproto import pgproto

from ledgerflow.contracts.codec import encode_event
from ledgerflow.contracts.commands import (
    ApproveCashOut,
    ConfirmCashIn,
    InitiatePayment,
    InitiateTransfer,
    RequestOnboarding,
    RequestRefund,
    ReturnCashOut,
    SettleCashOut,
)
from ledgerflow.contracts.events import (
    CashOutVoided,
    RejectReason,
    Tier,
    VoidReason,
)
from ledgerflow.contracts.parsing import InvalidCommand, ValidCommand
from ledgerflow.contracts.topics import CASHOUT
from ledgerflow.ledger_db import sql
from ledgerflow.ledger_db.content_hash import DEV_CONTENT_HASH_KEY, ContentHashKey
from ledgerflow.ledger_db.pii import DEV_VAULT, PiiVault
from ledgerflow.ledger_db.rules import (
    HOUSE_KINDS,
    Book,
    CashOut,
    CashOutState,
    CustomerOpened,
    Decision,
    FeeSchedule,
    HoldPlaced,
    HoldVoided,
    LedgerCommand,
    MoneyMoved,
    Payment,
    RefundDecided,
    Rejected,
    TierLimits,
    Wallet,
    house_account_id,
)
from ledgerflow.ledger_db.unit_of_work import RetryStats, run_in_transaction
from ledgerflow.ledger_db.wallet_attributes import Attributes, WalletAttributes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    import asyncpg
    from pydantic import BaseModel

    # A result's data: a model (rejections, rare) or its fields as the model dumps them.
    ResultData = BaseModel | dict[str, Any]

    from ledgerflow.contracts.topics import Flow

# House balances are split over this many rows; each connection writes the shard of its backend
# pid, so concurrent batches rarely queue on one row (docs/decisions/hot-house-accounts.md).
HOUSE_SHARDS = 16
BATCH_COMMANDS_MAX = 5_000
# Ids made at once: a result event per command and a journal entry per valid one.
RANDOM_IDS_MAX = 2 * BATCH_COMMANDS_MAX
# Commands decided before their rows are handed to PostgreSQL: small enough that it starts
# early and never waits long for the next chunk, large enough that each insert carries enough
# rows to be worth its round trips (docs/benchmarks.md).
DECIDE_CHUNK = 128
# Up to this many rows (all tables together), a chunk's inserts are one statement of arrays: one
# round trip, where a COPY per table costs two each. Beyond it, COPY per table: PostgreSQL's
# multi-row insert outruns row-by-row INSERT ... SELECT (measured in docs/benchmarks.md).
STATEMENT_ROWS_MAX = 128
# Deciding and encoding yield to the event loop every so many commands, so that the inserts
# under way (a COPY per table, two round trips each) go on without waiting for a whole chunk.
YIELD_EVERY = 4
# A hold's life when its command does not say (LEDGERFLOW_HOLD_EXPIRES_S), DESIGN.md §5.1.
HOLD_EXPIRES_S_DEFAULT = 259_200
# Holds voided per expiry round: one bounded transaction, like a batch.
EXPIRY_ROUND_MAX = 500
# A command naming what does not exist (yet) is answered, not recorded, so it may be sent again
# once it does: a second-phase cash-out command overtaking its approval (another topic,
# DESIGN.md §5.1), a refund overtaking its payment (keyed by the payer, another partition).
_NOT_RECORDED = frozenset({RejectReason.HOLD_NOT_FOUND.value, RejectReason.PAYMENT_NOT_FOUND.value})
RESULT_SOURCE = "/ledgerflow"
SUBJECT_CHARS_MAX = 255  # idempotency_records.subject, like customers.subject


class OutcomeKind(StrEnum):
    COMPLETED = "completed"
    REJECTED = "rejected"
    REPLAYED = "replayed"  # same key, same content: the stored result published again
    CONFLICT = "conflict"  # same key, other content: id_conflict, the first outcome stands
    INVALID = "invalid"  # attributable but invalid: invalid_command, not recorded
    UNAUTHORIZED = "unauthorized"  # token refused or not the wallet's owner: not recorded


@dataclass(frozen=True, slots=True)
class Incoming:
    """A parsed command and the transport context its result event continues."""

    command: ValidCommand | InvalidCommand
    traceparent: str | None = None
    # The command's Kafka key: its result event is keyed the same, to stay in its partition.
    key: bytes | None = None
    # Who asked (the verified token's subject); None when authentication is off.
    subject: str | None = None
    # Why the token was refused: answered `unauthorized`, nothing applied, nothing recorded.
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    flow: str
    key: str
    kind: OutcomeKind
    reason: str | None
    event_id: str
    topic: str


@dataclass(slots=True)
class LockTiming:
    """A batch's row locks, in seconds (perf_counter): how long taking them took (waiting for
    other batches that hold some, then the statements), and how long they were held, from
    taken to committed. Batches that share a wallet take turns for `locked_s` each."""

    lock_wait_s: float = 0.0
    locked_s: float = 0.0
    locked_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Stored:
    content_hash: bytes
    keyed: bool  # content_hash is HMAC-SHA-256 of the plain hash (ledger_db/content_hash.py)
    topic: str
    event_id: str
    payload: bytes


@dataclass(slots=True)
class _Inserts:
    """Ledger rows decided since the last hand-over, in the order the commands were decided:
    inserted a chunk at a time, each table after those it refers to."""

    customers: list[tuple[Any, ...]] = field(default_factory=list)
    pii: list[tuple[Any, ...]] = field(default_factory=list)
    wallets: list[tuple[Any, ...]] = field(default_factory=list)
    entries: list[tuple[Any, ...]] = field(default_factory=list)
    postings: list[tuple[Any, ...]] = field(default_factory=list)
    payments: list[tuple[Any, ...]] = field(default_factory=list)
    holds: list[tuple[Any, ...]] = field(default_factory=list)
    # The answers: idempotency records and outbox rows, after the ledger rows they refer to.
    records: list[tuple[Any, ...]] = field(default_factory=list)
    outbox: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass(slots=True)
class _Writes:
    """Every row the batch writes: the inserts of the chunk being decided, and the updates
    made once for the whole batch (balance deltas, payments refunded, holds resolved)."""

    rows: _Inserts = field(default_factory=_Inserts)
    deltas: dict[uuid.UUID, int] = field(default_factory=dict)
    # (payment_id, refunded, fee_returned) after the batch's refunds, one per payment
    refunded: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)
    # (cashout_id, status, void_reason, day given back, month given back, settle entry id)
    resolved: list[tuple[Any, ...]] = field(default_factory=list)


def database_clock() -> datetime | None:
    """None: PostgreSQL's clock_timestamp(), read once the batch's wallet rows are locked."""
    return None


@dataclass(slots=True)
class LedgerWriter:
    """Applies batches to one database. Holds only configuration and a cache of house accounts."""

    pool: asyncpg.Pool
    limits: Mapping[str, TierLimits]
    topic_prefix: str = ""
    retries_max: int = 8
    retry_stats: RetryStats = field(default_factory=RetryStats)
    vault: PiiVault = DEV_VAULT
    content_hash_key: ContentHashKey = DEV_CONTENT_HASH_KEY
    # The instant whose UTC day and month the outgoing totals count for; tests pin it to race
    # a batch across midnight.
    clock: Callable[[], datetime | None] = database_clock
    hold_expires_s: int = HOLD_EXPIRES_S_DEFAULT
    # A merchant's fee when operations set none (LEDGERFLOW_MERCHANT_FEE_BPS, _FIXED).
    default_fee: FeeSchedule = field(default_factory=FeeSchedule)
    # What the writer knows of the wallets it locked lately, besides their balance rows.
    wallet_attributes: WalletAttributes = field(default_factory=WalletAttributes)
    _house_currencies: set[str] = field(default_factory=set)

    async def apply(
        self, batch: Sequence[Incoming], *, timing: LockTiming | None = None
    ) -> list[Outcome]:
        """`timing`, when given, is filled with how long the batch waited for its row locks and
        how long it held them (the attempt that committed)."""
        assert len(batch) <= BATCH_COMMANDS_MAX, "batches are bounded"
        if not batch:
            return []
        await self._ensure_house_accounts(_currencies(batch))

        async def work(conn: asyncpg.Connection) -> list[Outcome]:
            return await _apply_in_transaction(conn, batch, self, timing)

        outcomes = await run_in_transaction(
            self.pool, work, retries_max=self.retries_max, stats=self.retry_stats
        )
        if timing is not None and timing.locked_at is not None:
            timing.locked_s = time.perf_counter() - timing.locked_at
        return outcomes

    async def expire_holds(self, limit: int = EXPIRY_ROUND_MAX) -> list[Outcome]:
        """One expiry round: void up to `limit` pending holds past their time, each exactly
        once however many replicas sweep at the same time (the hold is decided again under its
        wallet's lock; one that was settled, returned or expired meanwhile is left alone)."""
        assert 0 < limit <= EXPIRY_ROUND_MAX, "expiry rounds are bounded"
        candidates = await self.pool.fetch(sql.SELECT_EXPIRED_HOLDS, limit, self.clock())
        if not candidates:
            return []

        async def work(conn: asyncpg.Connection) -> list[Outcome]:
            return await _expire_in_transaction(conn, candidates, self)

        return await run_in_transaction(
            self.pool, work, retries_max=self.retries_max, stats=self.retry_stats
        )

    async def _ensure_house_accounts(self, currencies: set[str]) -> None:
        missing = currencies - self._house_currencies
        if not missing:
            return
        ids, kinds, curs = [], [], []
        for currency in sorted(missing):
            for kind in HOUSE_KINDS:
                ids.append(house_account_id(kind, currency))
                kinds.append(kind.value)
                curs.append(currency)
        shard_ids = [i for i in ids for _ in range(HOUSE_SHARDS)]
        shard_kinds = [k for k in kinds for _ in range(HOUSE_SHARDS)]
        shards = list(range(HOUSE_SHARDS)) * len(ids)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql.ENSURE_HOUSE_ACCOUNTS, ids, kinds, curs)
            await conn.execute(sql.ENSURE_HOUSE_SHARDS, shard_ids, shard_kinds, shards)
        self._house_currencies |= missing


def _currencies(batch: Iterable[Incoming]) -> set[str]:
    found: set[str] = set()
    for item in batch:
        cmd = item.command
        if isinstance(cmd, ValidCommand):
            currency = getattr(cmd.data, "currency", None)  # the second phase names none
            if currency is not None and type(cmd.data) is not RequestOnboarding:
                found.add(currency)
    return found


def _touched_wallets(commands: Iterable[LedgerCommand]) -> list[uuid.UUID]:
    ids: set[uuid.UUID] = set()
    for cmd in commands:
        kind = type(cmd)  # exact-type checks: see Book.decide
        if kind is InitiateTransfer:
            transfer = cast("InitiateTransfer", cmd)
            ids.add(transfer.from_account_id)
            ids.add(transfer.to_account_id)
        elif kind is InitiatePayment:
            payment = cast("InitiatePayment", cmd)
            ids.add(payment.from_account_id)
            ids.add(payment.merchant_account_id)
        elif kind is RequestRefund:
            ids.add(cast("RequestRefund", cmd).merchant_account_id)
        elif kind is not RequestOnboarding:
            ids.add(
                cast(
                    "ConfirmCashIn | ApproveCashOut | SettleCashOut | ReturnCashOut", cmd
                ).wallet_account_id
            )
    return list(ids)  # in any order: LOCK_WALLETS locks them in ascending order


def _refunded_payments(commands: Iterable[LedgerCommand]) -> list[uuid.UUID]:
    """The payments the batch's refunds name."""
    return sorted({cmd.payment_id for cmd in commands if type(cmd) is RequestRefund})


def _named_cashouts(commands: Iterable[LedgerCommand]) -> list[uuid.UUID]:
    """The cash-outs the batch's second-phase commands act on."""
    return sorted(
        {
            cast("SettleCashOut | ReturnCashOut", cmd).cashout_id
            for cmd in commands
            if type(cmd) in (SettleCashOut, ReturnCashOut)
        }
    )


async def load_tier_limits(pool: asyncpg.Pool) -> dict[str, TierLimits]:
    """`tier:currency` (currency may be '*') to limits, from the tier_limits table."""
    return {
        f"{r['tier']}:{r['currency']}": TierLimits(
            r["single_amount_max"], r["balance_max"], r["daily_out_max"], r["monthly_out_max"]
        )
        for r in await pool.fetch(sql.SELECT_TIER_LIMITS)
    }


async def _lock_book(
    conn: asyncpg.Connection,
    writer: LedgerWriter,
    wallet_ids: list[uuid.UUID],
    cashout_ids: list[uuid.UUID],
    payment_ids: Sequence[uuid.UUID] = (),
) -> Book:
    """The rows a batch decides on, locked: wallets first (ascending id), then holds
    (ascending cashout_id), then payments (ascending payment_id), the same order for commands
    and expiry, so none of them deadlocks."""
    wallets: dict[uuid.UUID, Wallet] = {}
    today: date | None = None
    now: datetime | None = None
    posted_at: datetime | None = None
    if wallet_ids:
        known = writer.wallet_attributes
        rows = await conn.fetch(
            sql.LOCK_WALLETS,
            ",".join(map(str, wallet_ids)),
            writer.clock(),
            ",".join(map(str, known.unknown(wallet_ids))),
        )
        # The clock's row: last as written (UNION ALL), found wherever it comes.
        clock = rows[-1] if rows[-1]["id"] is None else next(r for r in rows if r["id"] is None)
        today, now, posted_at = clock["clock_day"], clock["clock_now"], clock["posted_at"]
        version = clock["attributes_version"]
        unread: list[Any] = []
        known_at = known.get
        for row in rows:
            wallet_id = row[0]
            if wallet_id is None:
                continue
            # The outgoing totals were read with the lock: no concurrent debit slips past a
            # limit. Positional: the query's columns are Wallet's fields, in order.
            if row[1] is not None:  # attributes read with the lock
                wallet = Wallet(*row[: sql.LOCK_WALLETS_WALLET_COLUMNS])
                known.remember(version, wallet_id, _attributes_of(wallet))
            else:
                attributes = known_at(version, wallet_id)
                if attributes is None:  # of another version, or forgotten since
                    unread.append(row)
                    continue
                wallet = _wallet_from(row, attributes)
            wallets[wallet_id] = wallet
        if unread:
            read = await _read_attributes(conn, known, version, [row[0] for row in unread])
            for row in unread:
                assert row[0] in read, "a locked wallet has its account and customer"
                wallets[row[0]] = _wallet_from(row, read[row[0]])
    cashouts: dict[uuid.UUID, CashOut] = {}
    if cashout_ids:
        for row in await conn.fetch(sql.LOCK_CASHOUTS, ",".join(map(str, cashout_ids))):
            cashouts[row["cashout_id"]] = CashOut(
                row["cashout_id"],
                row["wallet_account_id"],
                row["currency"].strip(),
                row["amount"],
                row["fee"],
                CashOutState(row["status"]),
                expires_at=row["expires_at"],
                out_day=row["out_day"],
                void_reason=VoidReason(row["void_reason"]) if row["void_reason"] else None,
                reversed=row["reversed"],
                approved_by=(
                    (row["command_event_id"], row["correlation_id"])
                    if row["command_event_id"] is not None
                    else None
                ),
            )
    payments: dict[uuid.UUID, Payment] = {}
    if payment_ids:
        for row in await conn.fetch(sql.LOCK_PAYMENTS, list(payment_ids)):
            payments[row["payment_id"]] = Payment(
                row["payment_id"],
                row["payer_account_id"],
                row["merchant_account_id"],
                row["currency"].strip(),
                row["amount"],
                row["fee"],
                row["refunded"],
                row["fee_returned"],
            )
    return Book(
        wallets=wallets,
        taken_phone_numbers=set(),
        limits=writer.limits,
        cashouts=cashouts,
        today=today,
        now=now,
        posted_at=posted_at,
        hold_expires_s=writer.hold_expires_s,
        default_fee=writer.default_fee,
        payments=payments,
    )


def _wallet_from(row: Any, attributes: Attributes) -> Wallet:
    """A LOCK_WALLETS row without attributes, and the wallet's attributes."""
    currency, status, tier, owner, kind, customer_id = attributes
    # By position: id, balance, out_today, out_month, out_day, held.
    return Wallet(
        row[0], currency, status, tier, row[4], owner, row[6], row[7], row[8], row[9],
        kind, customer_id,
    )  # fmt: skip


def _attributes_of(wallet: Wallet) -> Attributes:
    return (
        wallet.currency,
        wallet.status,
        wallet.tier,
        wallet.owner,
        wallet.kind,
        wallet.customer_id,
    )


async def _read_attributes(
    conn: asyncpg.Connection, known: WalletAttributes, version: int, wallet_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Attributes]:
    """Attributes the writer had of another version, or forgot since the batch began, read
    after the lock and remembered at `version`: a later change shows in the next batch's."""
    read: dict[uuid.UUID, Attributes] = {}
    for row in await conn.fetch(sql.SELECT_WALLET_ATTRIBUTES, ",".join(map(str, wallet_ids))):
        read[row[0]] = attributes = tuple(row[1:])
        known.remember(version, row[0], attributes)
    return read


async def _apply_in_transaction(
    conn: asyncpg.Connection,
    batch: Sequence[Incoming],
    writer: LedgerWriter,
    timing: LockTiming | None = None,
) -> list[Outcome]:
    topic_prefix, vault, content_key = writer.topic_prefix, writer.vault, writer.content_hash_key
    valid = [item.command for item in batch if isinstance(item.command, ValidCommand)]
    commands = [cast("LedgerCommand", cmd.data) for cmd in valid]

    # 1. What was decided before, by key, and whether records are written keyed.
    stored: dict[tuple[str, str], _Stored | _Pending] = {}
    write_key: ContentHashKey | None = None
    if valid:
        rows = await conn.fetch(
            sql.SELECT_IDEMPOTENCY_RECORDS,
            ",".join([cmd.flow.name for cmd in valid]),
            ",".join([cmd.idempotency_key for cmd in valid]),
        )
        if content_key.writes_keyed(rows[0]["key_check"]):
            write_key = content_key
        for row in rows:
            if row["flow"] is None:
                continue  # the key check's row, no record with it
            stored[(row["flow"], str(row["key"]))] = _Stored(
                bytes(row["content_hash"]),
                row["content_hash_keyed"],
                row["result_topic"],
                str(row["result_event_id"]),
                bytes(row["result_payload"]),
            )

    # 2. Lock the wallets the batch touches, in ascending id order (no deadlock cycles), and
    #    read the clock under the locks; then the cash-outs the second phase names.
    refunded = _refunded_payments(commands)
    wallet_ids = _touched_wallets(commands)
    if refunded:  # the payers are credited: their wallets are locked with the others
        payers = await conn.fetch(sql.SELECT_PAYMENT_PAYERS, refunded)
        wallet_ids = list(set(wallet_ids) | {row["payer_account_id"] for row in payers})
    # Every id the batch can need (a result event per command, a journal entry per valid one),
    # made now: under the locks each would cost the batch sharing a wallet its wait.
    ids = random_ids(len(batch) + len(commands))
    event_ids, entry_ids = ids[: len(batch)], ids[len(batch) :]
    locking = time.perf_counter()
    book = await _lock_book(conn, writer, wallet_ids, _named_cashouts(commands), refunded)
    book.entry_ids = entry_ids
    if timing is not None:
        timing.locked_at = time.perf_counter()
        timing.lock_wait_s = timing.locked_at - locking
    merchants = [
        w.customer_id
        for w in book.wallets.values()
        if w.kind == "merchant" and w.customer_id is not None
    ]
    if merchants and any(type(cmd) is InitiatePayment for cmd in commands):
        book.fees = {
            row["customer_id"]: FeeSchedule(row["bps"], row["fixed"])
            for row in await conn.fetch(sql.SELECT_MERCHANT_FEES, merchants)
        }
    phones = {
        vault.phone_index(cmd.phone_number): cmd.phone_number
        for cmd in commands
        if isinstance(cmd, RequestOnboarding)
    }
    if phones:
        rows = await conn.fetch(sql.SELECT_TAKEN_PHONES, list(phones))
        book.taken_phone_numbers = {phones[bytes(row["phone_index"])] for row in rows}

    # 3. Decide every command in consumption order (pure rules), a chunk at a time, and encode
    #    its result events. Each chunk's rows (ledger and answers) are inserted while the next
    #    one is decided: PostgreSQL works on one core while Python decides on the other. The
    #    inserts run one after the other, in order, on the batch's connection. A batch of one
    #    chunk has nothing to overlap: its ledger rows and answers go in together, one insert.
    writes = _Writes()
    now = datetime.now(UTC)
    outcomes: list[Outcome] = []
    inserted: asyncio.Future[None] | None = None
    one_chunk = len(batch) <= DECIDE_CHUNK
    try:
        for start in range(0, len(batch), DECIDE_CHUNK):
            pending = []
            for index in range(start, min(start + DECIDE_CHUNK, len(batch))):
                if index % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # the inserts under way go on meanwhile
                pending.append(
                    _decide(batch[index], book, stored, writes, topic_prefix, vault, content_key)
                )
            decided, writes.rows = writes.rows, _Inserts()
            if one_chunk:  # nothing to overlap: the answers join the ledger rows' insert
                answers = decided
            else:
                inserted = asyncio.ensure_future(_insert_after(inserted, conn, decided))
                answers = _Inserts()
            outcomes += await _answer_all(pending, answers, now, write_key, event_ids)
            inserted = asyncio.ensure_future(_insert_after(inserted, conn, answers))
        balances = _balance_update(writes, book, conn.get_server_pid() % HOUSE_SHARDS)
    finally:
        if inserted is not None:
            await inserted

    # 4. Once per batch, set-based: the updates (balances, refunded payments, resolved holds).
    await _update_ledger(conn, writes, book, balances)
    if not valid:  # rejections only: no statement above raised the relay's wake-up
        await _notify_relay(conn)
    return outcomes


async def _expire_in_transaction(
    conn: asyncpg.Connection, candidates: Sequence[Any], writer: LedgerWriter
) -> list[Outcome]:
    """Lock the candidates' wallets, then their holds; void those still pending and past their
    time; publish `cashout.voided` (reason expired) answering each hold's approving command."""
    by_hold = {row["cashout_id"]: row["wallet_account_id"] for row in candidates}
    book = await _lock_book(conn, writer, sorted(set(by_hold.values())), sorted(by_hold))
    writes = _Writes()
    voided = [v for v in (book.expire(cashout_id) for cashout_id in sorted(by_hold)) if v]
    if not voided:
        return []
    now = datetime.now(UTC)
    outcomes = []
    for void in voided:
        _resolve(writes, void)
        cashout = void.cashout
        assert cashout.approved_by is not None, "a hold knows the command that placed it"
        causation_id, correlation_id = cashout.approved_by
        event_id = str(uuid.uuid4())
        topic = writer.topic_prefix + "cashout.voided"
        payload = encode_event(
            "cashout.voided",
            _voided(cashout, void),
            event_id=event_id,
            source=RESULT_SOURCE,
            causation_id=causation_id,
            correlation_id=correlation_id,
            time=now,
        )
        message_key = str(cashout.wallet_id).encode()
        writes.rows.outbox.append((event_id, topic, message_key, payload, None))
        outcomes.append(
            Outcome(
                CASHOUT.name,
                str(cashout.cashout_id),
                OutcomeKind.COMPLETED,
                VoidReason.EXPIRED.value,
                event_id,
                topic,
            )
        )
    balances = _balance_update(writes, book, conn.get_server_pid() % HOUSE_SHARDS)
    await _update_ledger(conn, writes, book, balances)
    await _insert_ledger(conn, writes.rows)
    await _notify_relay(conn)
    return outcomes


@dataclass(slots=True)
class _Pending:
    """A decided command whose result event is not encoded yet."""

    item: Incoming
    kind: OutcomeKind
    reason: str | None
    topic: str
    message_key: bytes
    data: ResultData | None = None  # the result to encode; None when replaying
    event_type: str = ""  # its CloudEvents type (the topic without the deployment's prefix)
    replay_of: _Stored | _Pending | None = None
    entry_id: uuid.UUID | None = None
    recorded: bool = False  # decided here: written to idempotency_records
    event_id: str = ""
    event_uuid: uuid.UUID | None = None
    payload: bytes = b""


def _decide(
    item: Incoming,
    book: Book,
    stored: dict[tuple[str, str], _Stored | _Pending],
    writes: _Writes,
    topic_prefix: str,
    vault: PiiVault,
    content_key: ContentHashKey,
) -> _Pending:
    cmd = item.command
    flow = cmd.flow
    if isinstance(cmd, InvalidCommand):
        return _Pending(
            item,
            OutcomeKind.INVALID,
            RejectReason.INVALID_COMMAND.value,
            topic_prefix + flow.rejected_topic,
            item.key or cmd.idempotency_key.encode(),
            data=cmd.rejection(),
            event_type=flow.rejected_topic,
        )

    key = (flow.name, cmd.idempotency_key)
    message_key = item.key or cmd.message_key.encode()
    # Who asked comes before the key is graded, so nobody can burn or probe another's id.
    refusal = item.refused or book.refuse_owner(cast("LedgerCommand", cmd.data), item.subject)
    if refusal is not None:
        return _Pending(
            item,
            OutcomeKind.UNAUTHORIZED,
            RejectReason.UNAUTHORIZED.value,
            topic_prefix + flow.rejected_topic,
            message_key,
            data=flow.rejected(cmd.idempotency_key, RejectReason.UNAUTHORIZED, refusal),
            event_type=flow.rejected_topic,
        )
    previous = stored.get(key)
    if previous is not None:
        if isinstance(previous, _Stored):
            # Graded by the row's own kind of hash: a row written plain (release 0.1, or before
            # the deployment was keyed) still replays.
            mine = content_key.keyed(cmd.content_hash) if previous.keyed else cmd.content_hash
            same = hmac.compare_digest(previous.content_hash, mine)
        else:  # decided earlier in this batch: both plain, in memory
            same = cast("ValidCommand", previous.item.command).content_hash == cmd.content_hash
        if same:
            return _Pending(
                item, OutcomeKind.REPLAYED, None, previous.topic, message_key, replay_of=previous
            )
        rejection = flow.rejected(
            cmd.idempotency_key,
            RejectReason.ID_CONFLICT,
            "this id was used before for a command with other content; the first outcome stands",
        )
        return _Pending(
            item,
            OutcomeKind.CONFLICT,
            RejectReason.ID_CONFLICT.value,
            topic_prefix + flow.rejected_topic,
            message_key,
            data=rejection,
            event_type=flow.rejected_topic,
        )

    command = cast("LedgerCommand", cmd.data)
    decision = book.decide(command, item.subject)
    event_type, data = _result(flow, command, decision, book)
    entry_id: uuid.UUID | None = None
    if isinstance(decision, RefundDecided):
        paid = decision.payment
        writes.refunded[paid.payment_id] = (paid.refunded, paid.fee_returned)
    moved = decision.moved if isinstance(decision, RefundDecided) else decision
    if isinstance(moved, MoneyMoved):
        entry_id = moved.entry_id
        writes.rows.entries.append((entry_id, flow.name, cmd.idempotency_key, moved.out_day))
        assert book.posted_at is not None, "money moves only in a batch that locked its wallets"
        for seq, (posting, after) in enumerate(
            zip(moved.postings, moved.balances_after, strict=True)
        ):
            writes.rows.postings.append(
                (
                    entry_id,
                    seq,
                    posting.account_id,
                    posting.currency,
                    posting.amount,
                    book.posted_at,
                    after,
                )
            )
            writes.deltas[posting.account_id] = (
                writes.deltas.get(posting.account_id, 0) + posting.amount
            )
        if type(command) is InitiatePayment:
            paid = book.payments[command.payment_id]
            writes.rows.payments.append(
                (
                    paid.payment_id,
                    paid.payer_id,
                    paid.merchant_id,
                    paid.currency,
                    paid.amount,
                    paid.fee,
                    entry_id,
                )
            )
        if type(command) is SettleCashOut:
            settled = book.cashouts[command.cashout_id]
            writes.resolved.append(
                (settled.cashout_id, CashOutState.SETTLED.value, None, False, False, entry_id)
            )
    elif isinstance(decision, CustomerOpened):
        _add_customer(writes, cast("RequestOnboarding", command), decision, item.subject, vault)
    elif isinstance(decision, HoldPlaced):
        held = decision.cashout
        writes.rows.holds.append(
            (
                held.cashout_id,
                held.wallet_id,
                held.currency,
                held.amount,
                held.fee,
                book.now,
                decision.expires_at,
                held.out_day,
                cmd.meta.event_id,
                cmd.meta.correlation_id,
            )
        )
    elif isinstance(decision, HoldVoided):
        _resolve(writes, decision)
    reason = decision.reason.value if isinstance(decision, Rejected) else None
    decided = _Pending(
        item,
        OutcomeKind.REJECTED if reason else OutcomeKind.COMPLETED,
        reason,
        topic_prefix + event_type,
        message_key,
        data=data,
        event_type=event_type,
        entry_id=entry_id,
        recorded=reason not in _NOT_RECORDED,
    )
    if decided.recorded:
        stored[key] = decided
    return decided


def _resolve(writes: _Writes, void: HoldVoided) -> None:
    writes.resolved.append(
        (
            void.cashout.cashout_id,
            CashOutState.VOIDED.value,
            void.reason.value,
            void.day_given_back,
            void.month_given_back,
            None,
        )
    )


async def _answer_all(
    pending: list[_Pending],
    rows: _Inserts,
    now: datetime,
    write_key: ContentHashKey | None,
    event_ids: list[uuid.UUID],
) -> list[Outcome]:
    """Encode each result event once (replays reuse the original bytes and id), in order.

    New events take their ids from the end of `event_ids`, made before the locks (one per
    command of the batch, so they never run out). Records store the content hash keyed under
    `write_key`, or plain while it is None.
    """
    outcomes: list[Outcome] = []
    for index, p in enumerate(pending):
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
        cmd = p.item.command
        flow = cmd.flow
        if p.replay_of is not None:
            p.event_id, p.payload = p.replay_of.event_id, p.replay_of.payload
        else:
            assert p.data is not None, "a decided result has data"
            assert p.event_type, "and its CloudEvents type"
            p.event_uuid = event_ids.pop()
            p.event_id = str(p.event_uuid)
            p.payload = _encode(p.event_type, p.data, p.event_id, cmd, now)
        if p.recorded:  # decided in this batch, so encoded just above
            assert isinstance(cmd, ValidCommand)
            assert p.event_uuid is not None
            rows.records.append(
                (
                    flow.name,
                    cmd.idempotency_key,
                    write_key.keyed(cmd.content_hash)
                    if write_key is not None
                    else cmd.content_hash,
                    write_key is not None,
                    p.kind.value,
                    p.reason,
                    p.entry_id,
                    p.topic,
                    p.event_uuid,
                    p.payload,
                    _recorded_subject(p.item.subject),
                )
            )
        rows.outbox.append((p.event_id, p.topic, p.message_key, p.payload, p.item.traceparent))
        outcomes.append(
            Outcome(flow.name, cmd.idempotency_key, p.kind, p.reason, p.event_id, p.topic)
        )
    return outcomes


def random_ids(count: int) -> list[uuid.UUID]:
    """`count` random (version 4) UUIDs from one read of the OS's randomness, as asyncpg's C
    UUID type, the type its rows carry: about a quarter of `uuid.uuid4()`'s cost each, and
    copied into binary COPY as they are, not converted."""
    assert 0 <= count <= RANDOM_IDS_MAX, f"{count} ids at once"
    raw = bytearray(os.urandom(16 * count))
    for at in range(6, 16 * count, 16):
        raw[at] = raw[at] & 0x0F | 0x40  # version 4
        raw[at + 2] = raw[at + 2] & 0x3F | 0x80  # the RFC 4122 variant
    made = bytes(raw)
    return [pgproto.UUID(made[at : at + 16]) for at in range(0, 16 * count, 16)]


def _recorded_subject(subject: str | None) -> str | None:
    """Who sent the command, as the read API shows its outcome to them; a subject past the
    column's bound is left out (then only a `ledger:read` reader sees the outcome)."""
    return subject if subject and len(subject) <= SUBJECT_CHARS_MAX else None


def _add_customer(
    writes: _Writes,
    cmd: RequestOnboarding,
    opened: CustomerOpened,
    subject: str | None,
    vault: PiiVault,
) -> None:
    bank = cmd.bank_account
    cid = cmd.customer_id
    rows = writes.rows
    rows.customers.append((cid, opened.wallet.tier, subject, opened.wallet.kind))
    rows.pii.append(
        (
            cid,
            vault.active_key_id,
            vault.encrypt(cid, "full_name", cmd.full_name),
            vault.encrypt(cid, "phone_number", cmd.phone_number),
            vault.encrypt(cid, "email", cmd.email),
            vault.encrypt(cid, "national_id", cmd.national_id),
            bank.bank_code if bank else None,
            vault.encrypt(cid, "bank_account_number", bank.account_number if bank else None),
            vault.phone_index(cmd.phone_number),
        )
    )
    rows.wallets.append((opened.wallet.id, opened.wallet.currency, cmd.customer_id))


def _voided(cashout: CashOut, void: HoldVoided) -> CashOutVoided:
    return CashOutVoided.model_construct(
        cashout_id=cashout.cashout_id,
        wallet_account_id=cashout.wallet_id,
        amount=cashout.amount,
        currency=cashout.currency,
        fee=cashout.fee,
        reason=void.reason,
        available_after=void.available_after,
    )


def _result(
    flow: Flow, cmd: LedgerCommand, decision: Decision, book: Book
) -> tuple[str, ResultData]:
    """The result event's type and data for a decided command.

    Successes are built as the fields of their model (in its field order, every value from a
    validated command or from the ledger): building the model and dumping it again would only
    cost time on the hot path. tests/unit/ledger/test_result_data.py holds each one to its
    model.
    """
    if isinstance(decision, Rejected):
        key = getattr(cmd, flow.id_field)
        return flow.rejected_topic, flow.rejected(key, decision.reason, decision.detail)
    kind = type(cmd)  # exact-type checks: see Book.decide
    if isinstance(decision, CustomerOpened):
        onboard = cast("RequestOnboarding", cmd)
        return flow.completed_topic, {
            "customer_id": onboard.customer_id,
            "wallet_account_id": decision.wallet.id,
            "currency": onboard.currency,
            "tier": Tier(decision.wallet.tier),
            "kind": onboard.customer_kind,
        }
    if isinstance(decision, HoldPlaced):
        held = decision.cashout
        return "cashout.held", {
            "cashout_id": held.cashout_id,
            "wallet_account_id": held.wallet_id,
            "amount": held.amount,
            "currency": held.currency,
            "fee": held.fee,
            "hold_expires_at": decision.expires_at,
            "available_after": decision.available_after,
        }
    if isinstance(decision, HoldVoided):
        return "cashout.voided", _voided(decision.cashout, decision)
    if isinstance(decision, RefundDecided):
        r, paid = cast("RequestRefund", cmd), decision.payment
        return flow.completed_topic, {
            "refund_id": r.refund_id,
            "payment_id": paid.payment_id,
            "merchant_account_id": paid.merchant_id,
            "to_account_id": paid.payer_id,
            "amount": r.amount,
            "fee_returned": decision.fee_returned,
            "refunded_total": paid.refunded,
            "currency": paid.currency,
            "journal_entry_id": decision.moved.entry_id,
            "balance_after": decision.moved.balance_after,
        }
    assert isinstance(decision, MoneyMoved), decision
    if kind is InitiateTransfer:  # the most frequent first
        t = cast("InitiateTransfer", cmd)
        return flow.completed_topic, {
            "transfer_id": t.transfer_id,
            "from_account_id": t.from_account_id,
            "to_account_id": t.to_account_id,
            "amount": t.amount,
            "currency": t.currency,
            "journal_entry_id": decision.entry_id,
            "balance_after": decision.balance_after,
        }
    if kind is InitiatePayment:
        paid = book.payments[cast("InitiatePayment", cmd).payment_id]
        return flow.completed_topic, {
            "payment_id": paid.payment_id,
            "from_account_id": paid.payer_id,
            "merchant_account_id": paid.merchant_id,
            "amount": paid.amount,
            "fee": paid.fee,
            "currency": paid.currency,
            "journal_entry_id": decision.entry_id,
            "balance_after": decision.balance_after,
        }
    if kind in (SettleCashOut, ReturnCashOut):
        held = book.cashouts[cast("SettleCashOut | ReturnCashOut", cmd).cashout_id]
        event_type = "cashout.completed" if kind is SettleCashOut else "cashout.reversed"
        return event_type, _cashout_moved(
            held.cashout_id, held.wallet_id, held.amount, held.currency, held.fee, decision
        )
    if kind is ConfirmCashIn:
        c = cast("ConfirmCashIn", cmd)
        return flow.completed_topic, {
            "cashin_id": c.cashin_id,
            "wallet_account_id": c.wallet_account_id,
            "amount": c.amount,
            "currency": c.currency,
            "journal_entry_id": decision.entry_id,
            "balance_after": decision.balance_after,
        }
    assert kind is ApproveCashOut, kind
    o = cast("ApproveCashOut", cmd)
    return flow.completed_topic, _cashout_moved(
        o.cashout_id, o.wallet_account_id, o.amount, o.currency, o.fee, decision
    )


def _cashout_moved(
    cashout_id: uuid.UUID,
    wallet_id: uuid.UUID,
    amount: int,
    currency: str,
    fee: int,
    moved: MoneyMoved,
) -> dict[str, Any]:
    """`cashout.completed` (paid out at once or settled) and `cashout.reversed` share fields."""
    return {
        "cashout_id": cashout_id,
        "wallet_account_id": wallet_id,
        "amount": amount,
        "currency": currency,
        "fee": fee,
        "journal_entry_id": moved.entry_id,
        "balance_after": moved.balance_after,
    }


def _encode(
    event_type: str,
    data: ResultData,
    event_id: str,
    cmd: ValidCommand | InvalidCommand,
    now: datetime,
) -> bytes:
    return encode_event(
        event_type,
        data,
        event_id=event_id,
        source=RESULT_SOURCE,
        causation_id=cmd.meta.event_id,
        correlation_id=cmd.meta.correlation_id,
        time=now,
    )


async def _insert_after(
    previous: asyncio.Future[None] | None, conn: asyncpg.Connection, rows: _Inserts
) -> None:
    """Insert a chunk's rows once the chunk before it is in (its error, if any, is raised)."""
    if previous is not None:
        await previous
    await _insert_ledger(conn, rows)


async def _insert_ledger(conn: asyncpg.Connection, rows: _Inserts) -> None:
    """Customers, wallets, journal entries, postings, payments, holds, idempotency records and
    outbox rows, whichever the chunk has, each table after those it refers to: in one statement
    when they are few, by binary COPY per table when they are many."""
    tables: list[tuple[sql.Insert, list[tuple[Any, ...]]]] = [
        (sql.CUSTOMERS, rows.customers),
        (sql.CUSTOMER_PII, rows.pii),
        (sql.WALLET_ACCOUNTS, [(i, "wallet", cur, cust) for i, cur, cust in rows.wallets]),
        (sql.WALLET_BALANCES, [(i, "wallet", 0, 0) for i, _, _ in rows.wallets]),
        (sql.ENTRIES, rows.entries),
        (sql.POSTINGS, rows.postings),
        (sql.PAYMENTS, rows.payments),
        (sql.HOLDS, rows.holds),
        (sql.IDEMPOTENCY_RECORDS, rows.records),
        (sql.OUTBOX, rows.outbox),
    ]
    present = [(insert, table_rows) for insert, table_rows in tables if table_rows]
    for insert, table_rows in present:
        width = len(insert.typed)
        assert all(len(row) == width for row in table_rows), f"{insert.table}: a row's width"
    if sum(len(table_rows) for _, table_rows in present) > STATEMENT_ROWS_MAX:
        for insert, table_rows in present:
            # Binary COPY: PostgreSQL's multi-row insert, no per-element array checks.
            await conn.copy_records_to_table(
                insert.table, records=table_rows, columns=list(insert.columns)
            )
        return
    if present:
        arrays: list[Any] = []
        for _, table_rows in present:
            arrays.extend(list(column) for column in zip(*table_rows, strict=True))
        await conn.execute(sql.insert_statement(tuple(insert for insert, _ in present)), *arrays)


async def _update_ledger(
    conn: asyncpg.Connection, w: _Writes, book: Book, balances: _BalanceUpdate | None
) -> None:
    """Payments refunded, holds resolved, balances and outgoing totals: once per batch, after
    every row they refer to is inserted."""
    if w.refunded:
        ids = list(w.refunded)
        await conn.execute(
            sql.REFUND_PAYMENTS,
            ids,
            [w.refunded[i][0] for i in ids],
            [w.refunded[i][1] for i in ids],
        )
    if w.resolved:
        # The settle entries exist by now (the hold refers to its entry). Every hold decided
        # here was pending under the batch's locks, so each resolution updates exactly one row.
        status = await conn.execute(sql.RESOLVE_HOLDS, *zip(*w.resolved, strict=True), book.now)
        updated = int(status.rsplit(" ", 1)[1])
        assert updated == len(w.resolved), f"{updated} of {len(w.resolved)} holds resolved"
    if balances is not None:
        # Wallet rows are locked already; house shard rows are locked here, last and in order.
        if balances.house_ids:
            await conn.execute(sql.LOCK_HOUSE_SHARDS, balances.house_ids, balances.shard)
        await conn.execute(sql.APPLY_BALANCE_DELTAS, *balances.arguments)


@dataclass(frozen=True, slots=True)
class _BalanceUpdate:
    house_ids: list[uuid.UUID]
    shard: int
    arguments: tuple[Any, ...]  # APPLY_BALANCE_DELTAS'


def _balance_update(w: _Writes, book: Book, shard: int) -> _BalanceUpdate | None:
    """The batch's one balance update (None: no balance changes), built in Python while the
    last inserts are still under way. Every wallet once, then the house accounts' `shard`."""
    wallet_ids = [
        a
        for a in w.deltas.keys()
        | book.held.keys()
        | book.outgoing.keys()
        | book.outgoing_month.keys()
        if a in book.wallets
    ]
    house_ids = sorted(a for a in w.deltas if a not in book.wallets)
    if not (wallet_ids or house_ids):
        return None
    ids = wallet_ids + house_ids
    assert book.today is not None, "money moves only in a batch that locked its wallets"

    def column(values: Mapping[uuid.UUID, int]) -> str:
        return ",".join([str(values.get(a, 0)) for a in ids])

    return _BalanceUpdate(
        house_ids,
        shard,
        (
            ",".join(map(str, ids)),
            ",".join(["0"] * len(wallet_ids) + [str(shard)] * len(house_ids)),
            column(w.deltas),
            column(book.outgoing),
            book.today,
            column(book.outgoing_month),
            column(book.held),
            book.posted_at,
        ),
    )


async def _notify_relay(conn: asyncpg.Connection) -> None:
    """The batch wrote outbox rows (every outcome has one): one wake-up per transaction, since
    NOTIFY takes a global lock at commit."""
    await conn.execute(sql.NOTIFY_OUTBOX)
