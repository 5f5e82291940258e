"""The batched apply path against a real PostgreSQL: flows, rejections, idempotency, outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC
from typing import Any

import asyncpg
import orjson
import pytest

from ledgerflow.contracts.events import RejectReason
from ledgerflow.contracts.parsing import parse_command
from ledgerflow.contracts.topics import TRANSFER
from ledgerflow.ledger_db import apply, sql
from ledgerflow.ledger_db.apply import Incoming, LedgerWriter, OutcomeKind
from ledgerflow.ledger_db.queries import get_account
from ledgerflow.ledger_db.rules import TierLimits, Wallet
from ledgerflow.ledger_db.sql import LOCK_WALLETS, LOCK_WALLETS_WALLET_COLUMNS, OUTBOX_CHANNEL
from ledgerflow.testkit.commands import (
    apply_all,
    cashin,
    cashout,
    held_cashout,
    merchant,
    onboarding,
    parsed,
    payment,
    record,
    refund,
    settle,
    transfer,
    wallet_of,
)
from ledgerflow.testkit.plugin import assert_audit_passes, wait_until

pytestmark = pytest.mark.integration


async def balance(pool: asyncpg.Pool, account: uuid.UUID) -> int:
    async with pool.acquire() as conn:
        view = await get_account(conn, account)
    assert view is not None
    return view.balance


async def outbox(pool: asyncpg.Pool) -> list[dict[str, object]]:
    rows = await pool.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
    return [
        {"topic": r["topic"], "key": bytes(r["key"]), **orjson.loads(r["payload"])} for r in rows
    ]


async def two_wallets(writer: LedgerWriter, funds: int = 10_000) -> tuple[uuid.UUID, uuid.UUID]:
    a, b = onboarding(), onboarding()
    await apply_all(writer, a, b, cashin(wallet_of(a), funds))
    return wallet_of(a), wallet_of(b)


async def test_every_flow_moves_money_and_writes_its_result(
    writer: LedgerWriter, pool: asyncpg.Pool
) -> None:
    a, b = onboarding(), onboarding()
    outcomes = await apply_all(
        writer,
        a,
        b,
        cashin(wallet_of(a), 1_000),
        transfer(wallet_of(a), wallet_of(b), 300),
        cashout(wallet_of(b), 200, fee=50),
    )
    assert [o.kind for o in outcomes] == [OutcomeKind.COMPLETED] * 5
    assert await balance(pool, wallet_of(a)) == 700
    assert await balance(pool, wallet_of(b)) == 50
    events = await outbox(pool)
    assert [e["type"] for e in events] == [
        "onboarding.completed",
        "onboarding.completed",
        "cashin.completed",
        "transfer.completed",
        "cashout.completed",
    ]
    assert events[3]["data"]["balance_after"] == 700  # type: ignore[index]
    assert events[4]["data"]["balance_after"] == 50  # type: ignore[index]
    assert events[3]["key"] == str(wallet_of(a)).encode()
    assert events[3]["id"] == outcomes[3].event_id


async def test_a_locked_row_is_its_wallet_field_by_field(
    writer: LedgerWriter, pool: asyncpg.Pool
) -> None:
    """The writer builds a Wallet from LOCK_WALLETS' row by position: its first columns must
    be Wallet's fields in order (the owner is the customer's subject), then the clock's row.
    Attributes come for the wallets asked for ($3) only."""
    person = onboarding()
    await apply_all(writer, person, cashin(wallet_of(person), 700))
    w = str(wallet_of(person))
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(LOCK_WALLETS, w, None, w)
        known = await conn.fetch(LOCK_WALLETS, w, None, "")
        version = await conn.fetchval("SELECT version FROM wallet_attributes_version")
    assert len(rows) == 2
    row, clock = rows
    columns = list(row.keys())[:LOCK_WALLETS_WALLET_COLUMNS]
    assert columns == [
        "subject" if f.name == "owner" else f.name for f in dataclasses.fields(Wallet)
    ]
    wallet = Wallet(*row[:LOCK_WALLETS_WALLET_COLUMNS])
    assert (wallet.id, wallet.balance, wallet.currency, wallet.customer_id) == (
        wallet_of(person),
        700,
        "EUR",
        person.customer_id,
    )
    assert clock["id"] is None
    assert clock["attributes_version"] == version
    assert clock["clock_day"] == clock["clock_now"].astimezone(UTC).date()
    bare = known[0]
    assert (bare["id"], bare["balance"], bare["currency"], bare["tier"]) == (
        wallet_of(person),
        700,
        None,
        None,
    )


async def test_changes_to_accounts_and_customers_bump_the_attributes_version(
    writer: LedgerWriter, pool: asyncpg.Pool
) -> None:
    """What the writers keep between batches is checked against this version with every lock:
    new wallets leave it, any change to an account or a customer moves it."""
    a, b = await two_wallets(writer)
    await apply_all(writer, transfer(a, b, 1))
    assert writer.wallet_attributes.unknown([a, b]) == []
    version = "SELECT version FROM wallet_attributes_version"
    before = await pool.fetchval(version)
    await apply_all(writer, onboarding())
    assert await pool.fetchval(version) == before
    await pool.execute("UPDATE accounts SET status = 'open' WHERE id = $1", a)
    assert await pool.fetchval(version) == before + 1
    customer = await pool.fetchval("SELECT customer_id FROM accounts WHERE id = $1", b)
    await pool.execute("UPDATE customers SET tier = 'basic' WHERE id = $1", customer)
    assert await pool.fetchval(version) == before + 2
    [moved] = await apply_all(writer, transfer(a, b, 5))
    assert moved.kind is OutcomeKind.COMPLETED
    assert writer.wallet_attributes.version == before + 2


async def test_wallets_forgotten_during_a_batch_are_read_again(pool: asyncpg.Pool) -> None:
    """A writer that knows one wallet at most: each batch finds the others forgotten, reads
    them after the lock, and decides as if it had always known them."""
    writer = LedgerWriter(pool, {"basic": TierLimits()})
    writer.wallet_attributes.size_max = 1
    a, b = await two_wallets(writer)
    c = wallet_of(person := onboarding())
    await apply_all(writer, person)
    for amount in (5, 7, 11):
        outcomes = await apply_all(
            writer, transfer(a, b, amount), transfer(b, c, 2), transfer(c, a, 1)
        )
        assert [o.kind for o in outcomes] == [OutcomeKind.COMPLETED] * 3
    assert len(writer.wallet_attributes) == 1
    assert [await balance(pool, w) for w in (a, b, c)] == [10_000 - 23 + 3, 23 - 6, 6 - 3]


@pytest.mark.parametrize(
    "case",
    ["not_found", "same", "currency", "insufficient", "limit_single", "limit_balance", "phone"],
)
async def test_each_rejection_reason(case: str, writer: LedgerWriter, pool: asyncpg.Pool) -> None:
    a, b = await two_wallets(writer)
    command, reason = {
        "not_found": (transfer(a, uuid.uuid4(), 1), RejectReason.ACCOUNT_NOT_FOUND),
        "same": (transfer(a, a, 1), RejectReason.SAME_ACCOUNT),
        "currency": (transfer(a, b, 1, currency="USD"), RejectReason.CURRENCY_MISMATCH),
        "insufficient": (cashout(a, 10_000, fee=1), RejectReason.INSUFFICIENT_FUNDS),
        "limit_single": (cashin(a, 1_000_001), RejectReason.LIMIT_EXCEEDED),
        "limit_balance": (cashin(b, 1_000_000), None),
        "phone": (None, RejectReason.PHONE_NUMBER_TAKEN),
    }[case]
    if case == "limit_balance":
        await apply_all(writer, *[cashin(b, 1_000_000) for _ in range(5)])
        command, reason = cashin(b, 1), RejectReason.LIMIT_EXCEEDED
    if case == "phone":
        first = onboarding()
        await apply_all(writer, first)
        command = onboarding(phone_number=first.phone_number)
    before = (await balance(pool, a), await balance(pool, b))
    [outcome] = await apply_all(writer, command)
    assert (outcome.kind, outcome.reason) == (OutcomeKind.REJECTED, reason)
    assert (await balance(pool, a), await balance(pool, b)) == before
    last = (await outbox(pool))[-1]
    assert last["type"].endswith(".rejected")  # type: ignore[union-attr]
    assert last["data"]["reason"] == reason  # type: ignore[index]


async def test_closed_account_is_refused(writer: LedgerWriter, pool: asyncpg.Pool) -> None:
    a, b = await two_wallets(writer)
    await pool.execute("UPDATE accounts SET status = 'closed' WHERE id = $1", b)
    [outcome] = await apply_all(writer, transfer(a, b, 5))
    assert outcome.reason == RejectReason.ACCOUNT_CLOSED


async def test_duplicate_replays_the_original_event_and_moves_money_once(
    writer: LedgerWriter, pool: asyncpg.Pool
) -> None:
    a, b = await two_wallets(writer)
    command = transfer(a, b, 100)
    [first] = await apply_all(writer, command)
    # A retry: same data, new envelope id; and one duplicate inside a single batch.
    [again, again_in_batch] = await apply_all(writer, command, command)
    assert first.kind is OutcomeKind.COMPLETED
    assert again.kind is again_in_batch.kind is OutcomeKind.REPLAYED
    assert first.event_id == again.event_id == again_in_batch.event_id
    assert await balance(pool, a) == 9_900
    events = [e for e in await outbox(pool) if e["type"] == "transfer.completed"]
    assert len(events) == 3
    assert len({e["id"] for e in events}) == 1, "a replay carries the original CloudEvents id"
    entries = await pool.fetchval("SELECT count(*) FROM journal_entries WHERE flow = 'transfer'")
    assert entries == 1


async def test_conflict_keeps_the_first_outcome(writer: LedgerWriter, pool: asyncpg.Pool) -> None:
    a, b = await two_wallets(writer)
    command = transfer(a, b, 100)
    await apply_all(writer, command)
    changed = command.model_copy(update={"amount": 999})
    [outcome] = await apply_all(writer, changed)
    assert (outcome.kind, outcome.reason) == (OutcomeKind.CONFLICT, RejectReason.ID_CONFLICT)
    assert await balance(pool, a) == 9_900
    [again] = await apply_all(writer, command)
    assert again.kind is OutcomeKind.REPLAYED


async def test_a_rejection_is_recorded_against_its_key(
    writer: LedgerWriter, pool: asyncpg.Pool
) -> None:
    a, b = await two_wallets(writer, funds=50)
    command = transfer(a, b, 100)
    [first] = await apply_all(writer, command)
    await apply_all(writer, cashin(a, 1_000))
    [retry] = await apply_all(writer, command)
    assert first.reason == RejectReason.INSUFFICIENT_FUNDS
    assert (retry.kind, retry.event_id) == (OutcomeKind.REPLAYED, first.event_id)
    assert await balance(pool, b) == 0


async def test_invalid_command_is_answered_and_not_recorded(
    writer: LedgerWriter, pool: asyncpg.Pool
) -> None:
    a, b = await two_wallets(writer)
    good = transfer(a, b, 100)
    envelope = orjson.loads(record(good).value)
    envelope["data"]["amount"] = "100"
    invalid = parse_command(TRANSFER, orjson.dumps(envelope))
    [outcome] = await writer.apply([Incoming(invalid)])
    assert (outcome.kind, outcome.reason) == (OutcomeKind.INVALID, "invalid_command")
    last = (await outbox(pool))[-1]
    assert last["type"] == "transfer.rejected"
    assert "amount" in last["data"]["detail"]  # type: ignore[index]
    # The client fixes the command and resends it with the same id: it is applied.
    [fixed] = await writer.apply([Incoming(parsed(good))])
    assert fixed.kind is OutcomeKind.COMPLETED


async def test_house_accounts_balance_the_wallets(writer: LedgerWriter, pool: asyncpg.Pool) -> None:
    a, b = await two_wallets(writer, funds=5_000)
    await apply_all(writer, transfer(a, b, 1_000), cashout(b, 500, fee=25))
    totals = await pool.fetch(
        "SELECT a.kind, sum(b.balance) AS total FROM balances b"
        " JOIN accounts a ON a.id = b.account_id GROUP BY a.kind ORDER BY a.kind"
    )
    by_kind = {r["kind"]: r["total"] for r in totals}
    assert by_kind == {
        "cashin_clearing": -5_000,
        "cashout_clearing": 500,
        "fee_revenue": 25,
        "wallet": 4_475,
    }


async def test_each_committed_batch_wakes_the_relay_once(
    writer: LedgerWriter, pool: asyncpg.Pool, database: Any
) -> None:
    a, b = await two_wallets(writer)
    listener = await asyncpg.connect(database.app_url)
    woken: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(OUTBOX_CHANNEL, lambda *args: woken.put_nowait(args[2]))
    try:
        await apply_all(writer, transfer(a, b, 100), transfer(b, a, 50))
        envelope = orjson.loads(record(transfer(a, b, 1)).value)
        envelope["data"]["amount"] = "1"
        await writer.apply([Incoming(parse_command(TRANSFER, orjson.dumps(envelope)))])
        # A round trip on the listener's connection delivers whatever was sent before it.
        await wait_until(lambda: woken.qsize() >= 2, timeout_s=5, message="two wake-ups")
        await listener.fetchval("SELECT 1")
        assert woken.qsize() == 2  # the batch of two transfers, then the rejection alone
    finally:
        await listener.close()
    assert [e["type"] for e in (await outbox(pool))[-3:]] == [
        "transfer.completed",
        "transfer.completed",
        "transfer.rejected",
    ]


async def test_a_batch_of_one_chunk_inserts_its_ledger_rows_and_answers_at_once(
    writer: LedgerWriter, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One round trip for a small batch's inserts; chunks of a larger one overlap deciding."""
    a, b = await two_wallets(writer)
    inserts: list[tuple[int, int, int, int]] = []  # entries, postings, records, outbox rows
    insert_ledger = apply._insert_ledger

    async def counted(conn: asyncpg.Connection, rows: Any) -> None:
        inserts.append((len(rows.entries), len(rows.postings), len(rows.records), len(rows.outbox)))
        await insert_ledger(conn, rows)

    monkeypatch.setattr(apply, "_insert_ledger", counted)
    await apply_all(writer, transfer(a, b, 10), transfer(b, a, 5))
    assert inserts == [(2, 4, 2, 2)]
    inserts.clear()
    monkeypatch.setattr(apply, "DECIDE_CHUNK", 1)
    await apply_all(writer, transfer(a, b, 10), transfer(b, a, 5))
    assert inserts == [(1, 2, 0, 0), (0, 0, 1, 1)] * 2
    assert await balance(pool, a) == 10_000 - 10
    await assert_audit_passes(pool)


async def test_a_small_batch_takes_six_round_trips(
    writer: LedgerWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BEGIN, what was decided before for the batch's keys (with the content-hash key check and
    the relay's wake-up), the locks, the insert, the balance update, COMMIT: a round trip more
    would show here (docs/benchmarks.md counts them). A replay in the batch is still answered
    from its record."""
    a, b = await two_wallets(writer)
    first = transfer(a, b, 10)
    await apply_all(writer, first)
    sent: list[str] = []

    def recorded(method: Any) -> Any:
        async def call(self: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
            sent.append(query)
            return await method(self, query, *args, **kw)

        return call

    for name in ("execute", "fetch"):
        monkeypatch.setattr(asyncpg.Connection, name, recorded(getattr(asyncpg.Connection, name)))
    outcomes = await apply_all(writer, first, transfer(b, a, 5))
    assert [o.kind for o in outcomes] == [OutcomeKind.REPLAYED, OutcomeKind.COMPLETED]
    assert len(sent) == 6, sent
    begin, records, lock, insert, update, commit = sent
    assert (begin, records, lock, update, commit) == (
        "BEGIN;",
        sql.SELECT_IDEMPOTENCY_RECORDS,
        sql.LOCK_WALLETS,
        sql.APPLY_BALANCE_DELTAS,
        "COMMIT;",
    )
    assert insert.startswith("WITH i0 AS (INSERT INTO journal_entries")


@pytest.mark.parametrize("rows_max", [0, 1_000_000], ids=["copy", "statement"])
async def test_a_chunk_writes_the_same_rows_by_copy_or_by_one_statement(
    rows_max: int, writer: LedgerWriter, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every table a chunk inserts into (customers and their PII, wallets, entries, postings,
    holds, payments, records, outbox), by either path."""
    monkeypatch.setattr(apply, "STATEMENT_ROWS_MAX", rows_max)
    a, b, shop = onboarding(), onboarding(), merchant()
    held = held_cashout(wallet_of(b), 100, fee=10)
    paid = payment(wallet_of(a), wallet_of(shop), 400)
    first = await apply_all(
        writer,
        a,
        b,
        shop,
        cashin(wallet_of(a), 1_000),
        transfer(wallet_of(a), wallet_of(b), 300),
        held,
        paid,
    )
    second = await apply_all(writer, settle(held), refund(paid, 150))
    assert [o.kind for o in first + second] == [OutcomeKind.COMPLETED] * 9
    counts = {
        table: await pool.fetchval(f"SELECT count(*) FROM {table}")
        for table in ("customer_pii", "journal_entries", "holds", "payments", "outbox")
    }
    assert counts == {
        "customer_pii": 3,
        "journal_entries": 5,  # cash-in, transfer, payment, settle, refund (a hold has none)
        "holds": 1,
        "payments": 1,
        "outbox": 9,
    }
    assert await balance(pool, wallet_of(a)) == 1_000 - 300 - 400 + 150
    assert await balance(pool, wallet_of(b)) == 300 - 110
    assert await pool.fetchval("SELECT status FROM holds") == "settled"
    await assert_audit_passes(pool)
