"""The audit's checks of issue 13: each journal entry posts what its recorded result says, outgoing
totals are within their tier's limits unless a tier change explains it, and each record keeps its
result whether or not the outbox still has the row. A superuser tampers; the audit must see it,
and an honest ledger must pass."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from ledgerflow.ledger_db.apply import LedgerWriter, OutcomeKind, load_tier_limits
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.ledger_db.rules import AccountKind, house_account_id
from ledgerflow.testkit.commands import apply_all, cashin, cashout, onboarding, transfer, wallet_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ledgerflow.ledger_db.audit import CheckResult

pytestmark = pytest.mark.integration

FEE_REVENUE = house_account_id(AccountKind.FEE_REVENUE, "EUR")
CASHOUT_CLEARING = house_account_id(AccountKind.CASHOUT_CLEARING, "EUR")


@pytest.fixture
async def admin(database: Any) -> AsyncIterator[asyncpg.Connection]:
    """A superuser whose writes fire no triggers (session_replication_role = replica): it can
    rewrite the append-only journal, as only an attacker or a bug could."""
    conn = await asyncpg.connect(database.admin_url)
    await conn.execute("SET session_replication_role = replica")
    try:
        yield conn
    finally:
        await conn.close()


async def audit(conn: asyncpg.Connection) -> dict[str, CheckResult]:
    return {r.name: r for r in await run_audit(conn)}


def failing(results: dict[str, CheckResult]) -> set[str]:
    return {name for name, r in results.items() if not r.ok}


async def honest_ledger(writer: LedgerWriter) -> dict[str, Any]:
    """Every flow, with fees, rejections, a replay and a conflict."""
    a, b = onboarding(), onboarding()
    wa, wb = wallet_of(a), wallet_of(b)
    paid = cashout(wa, 200, fee=15)
    moved = transfer(wa, wb, 40)
    outcomes = await apply_all(
        writer,
        a,
        b,
        cashin(wa, 1_000),
        cashin(wb, 100),
        moved,
        paid,
        cashout(wb, 10),
        cashout(wb, 10**6),
    )
    assert outcomes[-1].kind is OutcomeKind.REJECTED
    again = await apply_all(writer, moved, moved.model_copy(update={"amount": 41}))
    assert [o.kind for o in again] == [OutcomeKind.REPLAYED, OutcomeKind.CONFLICT]
    return {"a": wa, "b": wb, "cashout": paid, "transfer": moved}


async def entry_of(conn: asyncpg.Connection, key: uuid.UUID) -> uuid.UUID:
    entry = await conn.fetchval(
        "SELECT journal_entry_id FROM idempotency_records WHERE key = $1", key
    )
    assert isinstance(entry, uuid.UUID)
    return entry


async def move_posting(
    conn: asyncpg.Connection, entry: uuid.UUID, source: uuid.UUID, target: uuid.UUID
) -> None:
    """Re-point an entry's posting to another account, moving the balance with it, so every
    older check (balances, per-entry and per-currency sums) still holds."""
    amount = await conn.fetchval(
        "UPDATE postings SET account_id = $3 WHERE entry_id = $1 AND account_id = $2"
        " RETURNING amount",
        entry,
        source,
        target,
    )
    for account, delta in ((source, -amount), (target, amount)):
        await conn.execute(
            "UPDATE balances SET balance = balance + $2"
            " WHERE account_id = $1 AND shard = (SELECT min(shard) FROM balances"
            " WHERE account_id = $1)",
            account,
            delta,
        )


async def test_an_honest_ledger_passes_even_once_the_outbox_is_pruned(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    await honest_ledger(writer)
    assert failing(await audit(admin)) == set()
    # Outbox retention deletes published rows: the records keep the results.
    await admin.execute("DELETE FROM outbox")
    assert failing(await audit(admin)) == set()


async def test_a_fee_posted_to_the_wrong_house_account_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await honest_ledger(writer)
    entry = await entry_of(admin, ledger["cashout"].cashout_id)
    await move_posting(admin, entry, FEE_REVENUE, CASHOUT_CLEARING)
    results = await audit(admin)
    assert failing(results) == {"entries_match_results"}, "no older check sees it"
    [example] = results["entries_match_results"].examples
    assert example["entry_id"] == str(entry)
    assert f"{FEE_REVENUE}:15" in example["result_implies"]
    assert f"{FEE_REVENUE}:15" not in example["posted"]


async def test_a_transfer_to_another_wallet_or_of_another_amount_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await honest_ledger(writer)
    entry = await entry_of(admin, ledger["transfer"].transfer_id)
    third = onboarding()
    await apply_all(writer, third)
    await move_posting(admin, entry, ledger["b"], wallet_of(third))
    assert failing(await audit(admin)) == {"entries_match_results"}
    await move_posting(admin, entry, wallet_of(third), ledger["b"])
    assert failing(await audit(admin)) == set()
    # The record's result says another amount than the entry posted (outbox pruned, so only
    # the record holds the result).
    await admin.execute("DELETE FROM outbox")
    await admin.execute(
        "UPDATE idempotency_records SET result_payload = convert_to(jsonb_set("
        "convert_from(result_payload, 'UTF8')::jsonb, '{data,amount}', '41')::text, 'UTF8')"
        " WHERE key = $1",
        ledger["transfer"].transfer_id,
    )
    assert failing(await audit(admin)) == {"entries_match_results"}


async def test_outgoing_totals_above_a_lowered_tier_are_excused_only_by_its_change(
    pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    """The workers' limits come from the tier_limits table (basic: 2,000,000 a day; standard:
    20,000,000). A standard customer sends 2,500,000, then is lowered to basic the same day, as
    `ledgerflow customers set-tier` does: above basic's limit, and explained by the change."""
    writer = LedgerWriter(pool, await load_tier_limits(pool))
    person = onboarding()
    w = wallet_of(person)
    await apply_all(writer, person)
    set_tier = "UPDATE customers SET tier = $2 WHERE id = $1"  # cli/ledger_cmd.py set-tier
    await pool.execute(set_tier, person.customer_id, "standard")
    outcomes = await apply_all(writer, cashin(w, 3_000_000), cashout(w, 2_500_000))
    assert [o.kind for o in outcomes] == [OutcomeKind.COMPLETED] * 2
    await pool.execute(set_tier, person.customer_id, "basic")
    changes = await admin.fetch(
        "SELECT old_tier, new_tier FROM customer_tier_changes WHERE customer_id = $1 ORDER BY id",
        person.customer_id,
    )
    assert [tuple(c) for c in changes] == [("basic", "standard"), ("standard", "basic")]
    assert failing(await audit(admin)) == set()

    # Changes on another day do not explain today's total ...
    await admin.execute(
        "UPDATE customer_tier_changes SET changed_at = changed_at - interval '2 days'"
    )
    results = await audit(admin)
    assert failing(results) == {"outgoing_totals_within_limits"}
    [day] = [e for e in results["outgoing_totals_within_limits"].examples if e["period"] == "day"]
    assert (day["account_id"], day["total"], day["bound"], day["tiers"]) == (
        str(w),
        2_500_000,
        2_000_000,
        "basic",
    )
    # ... and no record at all (a tier lowered behind the trigger's back) explains nothing.
    await admin.execute("DELETE FROM customer_tier_changes")
    assert failing(await audit(admin)) == {"outgoing_totals_within_limits"}
    # A tier whose limits row is missing allows nothing: fail closed, in the audit too.
    await admin.execute("UPDATE customers SET tier = 'standard' WHERE id = $1", person.customer_id)
    assert failing(await audit(admin)) == set()
    await admin.execute("DELETE FROM tier_limits WHERE tier = 'standard'")
    assert failing(await audit(admin)) == {"outgoing_totals_within_limits"}


async def test_a_record_that_lost_its_result_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await honest_ledger(writer)
    await admin.execute("DELETE FROM outbox")
    await admin.execute(
        "UPDATE idempotency_records SET result_event_id = $2 WHERE key = $1",
        ledger["cashout"].cashout_id,
        uuid.uuid4(),
    )
    results = await audit(admin)
    assert failing(results) == {"records_keep_their_results"}
    [example] = results["records_keep_their_results"].examples
    assert example["key"] == str(ledger["cashout"].cashout_id)
    # A payload that is not even UTF-8 JSON fails its checks; every other check still runs.
    await admin.execute(
        "UPDATE idempotency_records SET result_payload = '\\xff'::bytea WHERE key = $1",
        ledger["transfer"].transfer_id,
    )
    results = await audit(admin)
    assert failing(results) == {"records_keep_their_results", "entries_match_results"}
    assert results["records_keep_their_results"].examples == [
        {"unreadable": "CharacterNotInRepertoireError"}
    ]


async def test_an_outbox_row_that_is_not_its_records_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await honest_ledger(writer)
    await admin.execute(
        "UPDATE outbox SET payload = convert_to(jsonb_set(convert_from(payload, 'UTF8')::jsonb,"
        " '{data,amount}', '1')::text, 'UTF8') WHERE event_id = (SELECT result_event_id"
        " FROM idempotency_records WHERE key = $1)",
        ledger["transfer"].transfer_id,
    )
    assert failing(await audit(admin)) == {"outbox_rows_match_records"}
    await admin.execute("DELETE FROM outbox")
    assert failing(await audit(admin)) == set()
    # A completion nobody recorded: the ledger would have answered for money it never moved.
    await admin.execute(
        "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, 'cashin.completed',"
        " 'k', $2)",
        uuid.uuid4(),
        json.dumps({"type": "cashin.completed"}).encode(),
    )
    assert failing(await audit(admin)) == {"outbox_rows_match_records"}
