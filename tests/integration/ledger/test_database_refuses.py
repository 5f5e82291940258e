"""PostgreSQL itself refuses what would break the ledger, whatever the Python code does."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from ledgerflow.contracts.commands import InitiatePayment
from ledgerflow.ledger_db.apply import LedgerWriter, OutcomeKind
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.testkit.commands import (
    apply_all,
    cashin,
    held_cashout,
    merchant,
    onboarding,
    payment,
    refund,
    settle,
    transfer,
    wallet_of,
)
from ledgerflow.testkit.plugin import assert_audit_passes

pytestmark = pytest.mark.integration

NEW_ENTRY = "INSERT INTO journal_entries (id, flow, idempotency_key) VALUES ($1, 'transfer', $2)"


async def post_entry(conn: asyncpg.Connection, *postings: tuple[str, uuid.UUID, int]) -> None:
    """A journal entry written by hand, bypassing the Python rules: PostgreSQL must judge it."""
    entry = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(NEW_ENTRY, entry, uuid.uuid4())
        if postings:  # one statement: PostgreSQL checks each INSERT of postings as a whole
            await conn.execute(
                "INSERT INTO postings SELECT $1, s, a, c, m FROM unnest("
                "$2::smallint[], $3::uuid[], $4::text[], $5::bigint[]) AS p(s, a, c, m)",
                entry,
                list(range(len(postings))),
                [account for _, account, _ in postings],
                [currency for currency, _, _ in postings],
                [amount for _, _, amount in postings],
            )


async def funded(writer: LedgerWriter) -> tuple[uuid.UUID, uuid.UUID]:
    a, b = onboarding(), onboarding()
    await apply_all(
        writer, a, b, cashin(wallet_of(a), 1_000), transfer(wallet_of(a), wallet_of(b), 1)
    )
    return wallet_of(a), wallet_of(b)


async def test_unbalanced_entry_is_refused_at_commit(writer: LedgerWriter, database: Any) -> None:
    a, b = await funded(writer)
    conn = await asyncpg.connect(database.app_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="not balanced"):
            await post_entry(conn, ("EUR", a, -10), ("EUR", b, 9))
        with pytest.raises(asyncpg.CheckViolationError, match="not balanced"):
            await post_entry(conn)
        # A posting added to an existing, balanced entry later is refused too.
        existing = await conn.fetchval("SELECT id FROM journal_entries LIMIT 1")
        with pytest.raises(asyncpg.CheckViolationError, match="not created with it"):
            await conn.execute(
                "INSERT INTO postings VALUES ($1, 7, $2, 'EUR', 10), ($1, 8, $3, 'EUR', -10)",
                existing,
                a,
                b,
            )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE postings SET amount = amount + 1",
        "DELETE FROM postings",
        "UPDATE journal_entries SET flow = 'cashin'",
        "DELETE FROM journal_entries",
        "TRUNCATE postings",
        "TRUNCATE journal_entries CASCADE",
    ],
)
async def test_journal_is_append_only_for_the_app_role(
    statement: str, writer: LedgerWriter, database: Any
) -> None:
    await funded(writer)
    conn = await asyncpg.connect(database.app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_journal_is_append_only_even_for_its_owner(
    writer: LedgerWriter, database: Any
) -> None:
    await funded(writer)
    conn = await asyncpg.connect(database.owner_url)
    try:
        for statement in (
            "UPDATE postings SET amount = 1",
            "DELETE FROM journal_entries",
            "TRUNCATE postings",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_wallet_never_negative(writer: LedgerWriter, database: Any) -> None:
    a, _ = await funded(writer)
    conn = await asyncpg.connect(database.app_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE balances SET balance = -1 WHERE account_id = $1", a)
    finally:
        await conn.close()


async def test_posting_currency_must_be_the_accounts(writer: LedgerWriter, database: Any) -> None:
    a, b = await funded(writer)
    conn = await asyncpg.connect(database.app_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="currency"):
            await post_entry(conn, ("USD", a, -10), ("USD", b, 10))
    finally:
        await conn.close()


async def paid_and_half_refunded(writer: LedgerWriter) -> InitiatePayment:
    payer, seller = onboarding(), merchant()
    await apply_all(writer, payer, seller, cashin(wallet_of(payer), 10_000))
    paid = payment(wallet_of(payer), wallet_of(seller), 1_000)
    await apply_all(writer, paid)
    await apply_all(writer, refund(paid, 500))
    return paid


NEW_PAYMENT = (
    "INSERT INTO payments (payment_id, payer_account_id, merchant_account_id, currency, amount,"
    " fee, entry_id) VALUES ($1, $2, $3, 'EUR', 1000, 15, $4)"
)


@pytest.mark.parametrize("missing", ["payer_account_id", "merchant_account_id", "entry_id"])
async def test_a_payment_names_rows_that_exist(
    missing: str, writer: LedgerWriter, database: Any
) -> None:
    """Checked once per statement (0011), as strictly as the foreign keys it replaced."""
    paid = await paid_and_half_refunded(writer)
    conn = await asyncpg.connect(database.app_url)
    transaction = conn.transaction()
    await transaction.start()
    try:  # rolled back: the hand-made entry has no postings
        entry, other = uuid.uuid4(), uuid.uuid4()
        for made in (entry, other):
            await conn.execute(NEW_ENTRY, made, uuid.uuid4())
        named = {
            "payer_account_id": paid.from_account_id,
            "merchant_account_id": paid.merchant_account_id,
            "entry_id": entry,
        }
        await conn.execute(NEW_PAYMENT, uuid.uuid4(), *named.values())  # every row exists
        nowhere = uuid.uuid4()
        bad = {**named, "entry_id": other, missing: nowhere}
        with pytest.raises(asyncpg.ForeignKeyViolationError, match=f"not exist: {nowhere}"):
            await conn.execute(NEW_PAYMENT, uuid.uuid4(), *bad.values())
    finally:
        await transaction.rollback()
        await conn.close()


async def test_a_hold_names_its_wallet_and_its_settling_entry(
    writer: LedgerWriter, database: Any
) -> None:
    """Checked once per statement (0011) when a hold is placed and when it is resolved."""
    owner = onboarding()
    await apply_all(writer, owner, cashin(wallet_of(owner), 10_000))
    approve = held_cashout(wallet_of(owner), 1_000)
    await apply_all(writer, approve)
    conn = await asyncpg.connect(database.owner_url)
    try:
        nowhere = uuid.uuid4()
        with pytest.raises(asyncpg.ForeignKeyViolationError, match=f"not exist: {nowhere}"):
            await conn.execute(
                "INSERT INTO holds (cashout_id, wallet_account_id, currency, amount, fee,"
                " placed_at, expires_at, out_day, command_event_id, correlation_id)"
                " SELECT $1, $2, currency, amount, fee, placed_at, expires_at, out_day,"
                " 'e', 'c' FROM holds WHERE cashout_id = $3",
                uuid.uuid4(),
                nowhere,
                approve.cashout_id,
            )
        with pytest.raises(asyncpg.ForeignKeyViolationError, match=f"not exist: {nowhere}"):
            await conn.execute(
                "UPDATE holds SET status = 'settled', resolved_at = now(), settle_entry_id = $1"
                " WHERE cashout_id = $2",
                nowhere,
                approve.cashout_id,
            )
    finally:
        await conn.close()
    [settled] = await apply_all(writer, settle(approve))  # the real settlement passes
    assert settled.kind is OutcomeKind.COMPLETED
    await assert_audit_passes(writer.pool)


@pytest.mark.parametrize(
    "change",
    ["refunded = refunded - 1", "amount = amount + 1", "merchant_account_id = payer_account_id"],
)
async def test_refunds_only_grow_even_for_the_owner(
    change: str, writer: LedgerWriter, database: Any
) -> None:
    paid = await paid_and_half_refunded(writer)
    conn = await asyncpg.connect(database.owner_url)
    try:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="refunded further"):
            await conn.execute(
                f"UPDATE payments SET {change} WHERE payment_id = $1", paid.payment_id
            )
        # What a refund does passes the trigger (and the row's checks).
        await conn.execute(
            "UPDATE payments SET refunded = amount, fee_returned = fee WHERE payment_id = $1",
            paid.payment_id,
        )
    finally:
        await conn.close()


async def test_app_role_owns_no_table(database: Any) -> None:
    conn = await asyncpg.connect(database.admin_url)
    try:
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_tables"
            " WHERE schemaname = 'public' AND tableowner = 'ledgerflow_app'"
        )
    finally:
        await conn.close()
    assert owned == 0


async def test_audit_catches_a_tampered_balance(writer: LedgerWriter, database: Any) -> None:
    a, _ = await funded(writer)
    conn = await asyncpg.connect(database.admin_url)
    try:
        assert all(r.ok for r in await run_audit(conn))
        await conn.execute("UPDATE balances SET balance = balance + 500 WHERE account_id = $1", a)
        results = {r.name: r for r in await run_audit(conn)}
    finally:
        await conn.close()
    assert not results["balances_equal_postings"].ok
    assert results["balances_equal_postings"].examples[0]["account_id"] == str(a)
    assert results["currency_totals_zero"].ok


async def test_audit_catches_outgoing_totals_that_disagree_with_the_debits(
    writer: LedgerWriter, database: Any
) -> None:
    """Limit totals counted twice (or lost) by a replay would let a wallet pass, or wrongly
    fail, its daily limit; the audit recounts them from the journal's debits."""
    a, b = await funded(writer)
    await apply_all(writer, transfer(a, b, 40), transfer(b, a, 7))
    conn = await asyncpg.connect(database.admin_url)
    try:
        totals = {
            r["account_id"]: (r["out_day_total"], r["out_month_total"])
            for r in await conn.fetch(
                "SELECT account_id, out_day_total, out_month_total FROM balances"
                " WHERE kind = 'wallet'"
            )
        }
        assert totals == {a: (41, 41), b: (7, 7)}
        assert all(r.ok for r in await run_audit(conn))
        await conn.execute(
            "UPDATE balances SET out_day_total = out_day_total + 1,"
            " out_month_total = out_month_total + 1 WHERE account_id = $1",
            b,
        )
        results = {r.name: r for r in await run_audit(conn)}
    finally:
        await conn.close()
    broken = results["outgoing_totals_match_debits"]
    assert not broken.ok
    [example] = broken.examples
    assert example["account_id"] == str(b)
    assert (example["outgoing_day"], example["debits_day"]) == (8, 7)
    assert (example["outgoing_month"], example["debits_month"]) == (8, 7)
    assert results["balances_equal_postings"].ok


async def test_outgoing_totals_belong_to_wallets_and_a_day_to_its_month(
    writer: LedgerWriter, database: Any
) -> None:
    a, _ = await funded(writer)
    conn = await asyncpg.connect(database.app_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="day_in_month"):
            await conn.execute(
                "UPDATE balances SET out_day_total = out_month_total + 1 WHERE account_id = $1", a
            )
        with pytest.raises(asyncpg.CheckViolationError, match="day_in_month"):
            await conn.execute(
                "UPDATE balances SET out_month = (out_month + interval '1 month')::date"
                " WHERE account_id = $1",
                a,
            )
        # Never back to an earlier day or month (0004): 40001, so a stale writer retries.
        for earlier in (
            "out_day = out_day - 1",
            "out_month = (out_month - interval '1 year')::date",
        ):
            with pytest.raises(asyncpg.SerializationError, match="would move them back"):
                await conn.execute(f"UPDATE balances SET {earlier} WHERE account_id = $1", a)
        with pytest.raises(asyncpg.CheckViolationError, match="wallet_only"):
            await conn.execute("UPDATE balances SET out_day_total = 1 WHERE kind <> 'wallet'")
    finally:
        await conn.close()
