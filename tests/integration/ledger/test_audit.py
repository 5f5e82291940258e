"""The audit's checks of issue 13: each journal entry posts what its recorded result says, outgoing
totals are within their tier's limits unless a tier change explains it, and each record keeps its
result whether or not the outbox still has the row. A superuser tampers; the audit must see it,
and an honest ledger must pass."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
import pytest

from ledgerflow.ledger_db.apply import LedgerWriter, OutcomeKind, load_tier_limits
from ledgerflow.ledger_db.audit import run_audit
from ledgerflow.ledger_db.merchants import set_merchant_fee
from ledgerflow.ledger_db.rules import AccountKind, FeeSchedule, house_account_id
from ledgerflow.testkit.commands import (
    apply_all,
    cashin,
    cashout,
    held_cashout,
    merchant,
    onboarding,
    payment,
    refund,
    returned,
    settle,
    transfer,
    wallet_of,
)

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


async def restate_running_balances(conn: asyncpg.Connection, *accounts: uuid.UUID) -> None:
    """A thorough forger also rewrites the wallets' running balances (the read side's
    balance_after), so that only the check under test can see the change."""
    await conn.execute(
        """
        UPDATE postings p SET balance_after = r.running
        FROM (SELECT entry_id, seq, sum(amount) OVER (
                  PARTITION BY account_id ORDER BY posted_at, id) AS running
              FROM postings WHERE account_id = ANY($1::uuid[])) r
        WHERE p.entry_id = r.entry_id AND p.seq = r.seq AND p.balance_after IS NOT NULL
        """,
        list(accounts),
    )


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
    await restate_running_balances(conn, source, target)


async def shift_posting(
    conn: asyncpg.Connection, entry: uuid.UUID, source: uuid.UUID, target: uuid.UUID, delta: int
) -> None:
    """Move `delta` from an entry's posting on `source` to its posting on `target`, with the
    balances: the entry stays balanced and every balance its postings' sum."""
    for account, change in ((source, -delta), (target, delta)):
        await conn.execute(
            "UPDATE postings SET amount = amount + $3 WHERE entry_id = $1 AND account_id = $2",
            entry,
            account,
            change,
        )
        await conn.execute(
            "UPDATE balances SET balance = balance + $2"
            " WHERE account_id = $1 AND shard = (SELECT min(shard) FROM balances"
            " WHERE account_id = $1)",
            account,
            change,
        )
    await restate_running_balances(conn, source, target)


async def test_an_honest_ledger_passes_even_once_the_outbox_is_pruned(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    await honest_ledger(writer)
    assert failing(await audit(admin)) == set()
    # Outbox retention deletes published rows: the records keep the results.
    await admin.execute("DELETE FROM outbox")
    assert failing(await audit(admin)) == set()


async def test_a_running_balance_the_read_side_would_show_wrong_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """The history's balance_after is stored at write time: one that disagrees with the
    postings (a bug, or a hand edit) fails the audit, and only that check."""
    ledger = await honest_ledger(writer)
    entry = await entry_of(admin, ledger["transfer"].transfer_id)
    stored = await admin.fetchval(
        "SELECT balance_after FROM postings WHERE entry_id = $1 AND account_id = $2",
        entry,
        ledger["b"],
    )
    assert stored is not None
    await admin.execute("ALTER TABLE postings DISABLE TRIGGER postings_append_only")
    await admin.execute(
        "UPDATE postings SET balance_after = balance_after + 1"
        " WHERE entry_id = $1 AND account_id = $2",
        entry,
        ledger["b"],
    )
    await admin.execute("ALTER TABLE postings ENABLE TRIGGER postings_append_only")
    results = await audit(admin)
    assert failing(results) == {"running_balances_match_postings"}
    [example] = results["running_balances_match_postings"].examples
    assert (example["balance_after"], example["running"]) == (stored + 1, stored)


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


# -- holds (DESIGN.md §5.1) ---------------------------------------------------------------------

PREFIX = "t1234abcd."


def at_clock(writer: LedgerWriter, at: dt.datetime | None = None) -> LedgerWriter:
    """The writer's limits under the deployment prefix, its clock pinned at `at` (None: the
    database's)."""
    if at is None:
        return LedgerWriter(writer.pool, writer.limits, topic_prefix=PREFIX)
    return LedgerWriter(writer.pool, writer.limits, topic_prefix=PREFIX, clock=lambda: at)


async def ledger_with_holds(writer: LedgerWriter) -> dict[str, Any]:
    """Every path of a held cash-out, with fees, under a topic prefix: settled, returned before
    settling, expired (swept by a writer whose clock is past its time), reversed after it
    settled, an immediate cash-out reversed, and one still pending."""
    now = at_clock(writer)
    person, other = onboarding(), onboarding()
    w = wallet_of(person)
    await apply_all(now, person, other, cashin(w, 100_000))
    ledger = {
        "wallet": w,
        "settled": held_cashout(w, 3_000, fee=50),
        "returned": held_cashout(w, 2_000, fee=20),
        "expired": held_cashout(w, 1_000, fee=5, expires_in_s=60),
        "reversed_hold": held_cashout(w, 700, fee=7),
        "reversed": cashout(w, 400, fee=4),
        "pending": held_cashout(w, 900, fee=9),
    }
    placed = await apply_all(
        now,
        *(ledger[k] for k in ("settled", "returned", "expired", "reversed_hold", "pending")),
        ledger["reversed"],
        transfer(w, wallet_of(other), 100),
    )
    assert [o.topic for o in placed] == [PREFIX + "cashout.held"] * 5 + [
        PREFIX + "cashout.completed",
        PREFIX + "transfer.completed",
    ]
    second = await apply_all(
        now,
        settle(ledger["settled"]),
        returned(ledger["returned"]),
        settle(ledger["reversed_hold"]),
        returned(ledger["reversed"]),
        settle(held_cashout(w, 1)),  # hold_not_found: answered, not recorded
    )
    assert [o.topic.removeprefix(PREFIX) for o in second] == [
        "cashout.completed",
        "cashout.voided",
        "cashout.completed",
        "cashout.reversed",
        "cashout.rejected",
    ]
    [back] = await apply_all(now, returned(ledger["reversed_hold"]))
    assert back.topic == PREFIX + "cashout.reversed"
    later = at_clock(writer, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61))
    [expired] = await later.expire_holds()
    assert (expired.key, expired.reason) == (str(ledger["expired"].cashout_id), "expired")
    # Replays and conflicts of the second phase add nothing.
    again = await apply_all(
        now, settle(ledger["settled"]), settle(ledger["settled"], bank_reference="OTHER")
    )
    assert [o.kind for o in again] == [OutcomeKind.REPLAYED, OutcomeKind.CONFLICT]
    return ledger


async def set_data(admin: asyncpg.Connection, flow: str, key: uuid.UUID, **data: Any) -> None:
    """Rewrite fields of a record's result `data` (the outbox is pruned first by the callers)."""
    for name, value in data.items():
        await admin.execute(
            "UPDATE idempotency_records SET result_payload = convert_to(jsonb_set("
            "convert_from(result_payload, 'UTF8')::jsonb, $3::text[], $4::jsonb)::text, 'UTF8')"
            " WHERE flow = $1 AND key = $2",
            flow,
            key,
            ["data", name],
            json.dumps(value),
        )


async def entry_of_flow(conn: asyncpg.Connection, flow: str, key: uuid.UUID) -> uuid.UUID:
    entry = await conn.fetchval(
        "SELECT id FROM journal_entries WHERE flow = $1 AND idempotency_key = $2", flow, key
    )
    assert isinstance(entry, uuid.UUID)
    return entry


async def test_an_honest_ledger_with_holds_passes_even_once_the_outbox_is_pruned(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await ledger_with_holds(writer)
    await honest_ledger(writer)
    assert failing(await audit(admin)) == set()
    statuses = dict(
        await admin.fetch(
            "SELECT coalesce(void_reason, status), count(*) FROM holds GROUP BY 1 ORDER BY 1"
        )
    )
    assert statuses == {"expired": 1, "pending": 1, "returned": 1, "settled": 2}
    held = await admin.fetchval("SELECT held FROM balances WHERE account_id = $1", ledger["wallet"])
    assert held == 909
    await admin.execute("DELETE FROM outbox")
    assert failing(await audit(admin)) == set()


async def test_voids_across_days_give_back_what_their_day_and_month_still_counted(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """A hold voided the next day gives back only its month; one placed and voided in one
    batch counts nothing, and leaves the wallet's day where it was."""
    day0 = dt.datetime(2031, 5, 9, 12, tzinfo=dt.UTC)
    person, other = onboarding(), onboarding()
    w, to = wallet_of(person), wallet_of(other)
    await apply_all(at_clock(writer, day0), person, other, cashin(w, 10_000), transfer(w, to, 200))
    hold = held_cashout(w, 100, fee=1, expires_in_s=3_600)
    await apply_all(at_clock(writer, day0 + dt.timedelta(days=1)), hold, transfer(w, to, 30))
    next_day = at_clock(writer, day0 + dt.timedelta(days=2))
    [expired] = await next_day.expire_holds()
    assert expired.key == str(hold.cashout_id)
    assert failing(await audit(admin)) == set()
    await apply_all(next_day, transfer(w, to, 5))
    brief = held_cashout(w, 50)
    await apply_all(
        at_clock(writer, dt.datetime(2031, 6, 1, 9, tzinfo=dt.UTC)), brief, returned(brief)
    )
    row = await admin.fetchrow(
        "SELECT out_day, out_day_total, out_month_total FROM balances WHERE account_id = $1", w
    )
    assert row is not None
    assert tuple(row) == (dt.date(2031, 5, 11), 5, 235)
    given_back = await admin.fetch(
        "SELECT day_given_back, month_given_back FROM holds WHERE wallet_account_id = $1"
        " ORDER BY placed_at",
        w,
    )
    assert [tuple(g) for g in given_back] == [(False, True), (True, True)]
    assert failing(await audit(admin)) == set()
    # A give-back the hold never made: the month's total no longer adds up.
    await admin.execute(
        "UPDATE holds SET day_given_back = false, month_given_back = false WHERE cashout_id = $1",
        hold.cashout_id,
    )
    results = await audit(admin)
    assert failing(results) == {"outgoing_totals_match_debits"}
    [example] = results["outgoing_totals_match_debits"].examples
    assert (example["outgoing_day"], example["debits_day"]) == (5, 5)
    assert (example["outgoing_month"], example["debits_month"]) == (235, 336)


@pytest.mark.parametrize("how", ["expired", "returned"])
async def test_a_hold_voided_the_day_after_it_was_the_months_only_debit(
    writer: LedgerWriter, admin: asyncpg.Connection, how: str
) -> None:
    """The void gives the month back but not the day, which is over: the row moves to the
    void's day with nothing counted (the old day's total must not outlive its day)."""
    day1 = dt.datetime(2031, 5, 10, 12, tzinfo=dt.UTC)
    person = onboarding()
    w = wallet_of(person)
    hold = held_cashout(w, 100, expires_in_s=3_600)
    await apply_all(at_clock(writer, day1), person, cashin(w, 1_000), hold)
    next_day = at_clock(writer, day1 + dt.timedelta(days=1))
    if how == "expired":
        [voided] = await next_day.expire_holds()
        assert voided.topic.endswith("cashout.voided")
    else:
        [voided] = await apply_all(next_day, returned(hold))
        assert voided.topic.endswith("cashout.voided")
    row = await admin.fetchrow(
        "SELECT held, out_day, out_day_total, out_month_total FROM balances WHERE account_id = $1",
        w,
    )
    assert dict(row) == {
        "held": 0,
        "out_day": dt.date(2031, 5, 11),
        "out_day_total": 0,
        "out_month_total": 0,
    }
    assert failing(await audit(admin)) == set()


async def test_a_held_amount_that_is_not_its_pending_holds_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await ledger_with_holds(writer)
    w = ledger["wallet"]
    await admin.execute("UPDATE balances SET held = held + 1 WHERE account_id = $1", w)
    results = await audit(admin)
    assert failing(results) == {"held_equals_pending_holds"}
    assert results["held_equals_pending_holds"].examples == [
        {"account_id": str(w), "held": 910, "pending": 909}
    ]
    await admin.execute("UPDATE balances SET held = held - 1 WHERE account_id = $1", w)
    assert failing(await audit(admin)) == set()
    # A pending hold marked expired behind the ledger's back: the wallet still holds its money.
    await admin.execute(
        "UPDATE holds SET status = 'voided', void_reason = 'expired', resolved_at = now()"
        " WHERE cashout_id = $1",
        ledger["pending"].cashout_id,
    )
    assert failing(await audit(admin)) == {"held_equals_pending_holds"}
    await admin.execute(
        "UPDATE holds SET status = 'pending', void_reason = NULL, resolved_at = NULL"
        " WHERE cashout_id = $1",
        ledger["pending"].cashout_id,
    )
    assert failing(await audit(admin)) == set()
    # Past the database's own word (a constraint only a superuser can drop): the wallet spends
    # what it holds.
    await admin.execute("ALTER TABLE balances DROP CONSTRAINT balances_available_not_negative")
    await admin.execute("UPDATE balances SET balance = held - 1 WHERE account_id = $1", w)
    results = await audit(admin)
    assert failing(results) == {"no_negative_wallet", "balances_equal_postings"}
    assert results["no_negative_wallet"].examples == [
        {"account_id": str(w), "balance": 908, "held": 909}
    ]


async def test_a_settlement_that_is_not_its_hold_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """The settle record and its entry agree with each other (both rewritten): only the hold
    still says what was paid out."""
    ledger = await ledger_with_holds(writer)
    settled = ledger["settled"]
    await admin.execute("DELETE FROM outbox")
    entry = await entry_of_flow(admin, "cashout_settle", settled.cashout_id)
    await shift_posting(admin, entry, FEE_REVENUE, CASHOUT_CLEARING, 1)
    await set_data(admin, "cashout_settle", settled.cashout_id, amount=3_001, fee=49)
    results = await audit(admin)
    assert failing(results) == {"settled_holds_have_their_entry"}
    [example] = results["settled_holds_have_their_entry"].examples
    assert (example["cashout_id"], example["entry_id"]) == (str(settled.cashout_id), str(entry))
    assert f"{FEE_REVENUE}:50" in example["hold_implies"]
    assert f"{CASHOUT_CLEARING}:3001" in example["posted"]


async def test_a_settlement_entry_counted_toward_the_totals_again_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await ledger_with_holds(writer)
    await admin.execute(
        "UPDATE journal_entries SET out_day = (now() AT TIME ZONE 'UTC')::date"
        " WHERE flow = 'cashout_settle' AND idempotency_key = $1",
        ledger["settled"].cashout_id,
    )
    assert failing(await audit(admin)) == {"settled_holds_have_their_entry"}


async def test_a_settlement_entry_of_a_hold_not_settled_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await ledger_with_holds(writer)
    settled = ledger["settled"]
    entry = await entry_of_flow(admin, "cashout_settle", settled.cashout_id)
    # The hold rewritten as expired (no settlement), its entry left in the journal.
    await admin.execute(
        "UPDATE holds SET status = 'voided', void_reason = 'expired', settle_entry_id = NULL"
        " WHERE cashout_id = $1",
        settled.cashout_id,
    )
    results = await audit(admin)
    assert failing(results) == {"settle_entries_have_settled_holds"}
    assert results["settle_entries_have_settled_holds"].examples == [
        {"entry_id": str(entry), "cashout_id": str(settled.cashout_id), "status": "voided"}
    ]


async def test_a_reversal_that_does_not_mirror_its_cash_out_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """The reversal's record and entry agree (both rewritten: part of the fee came back as
    amount); only the cash-out's own entry says what went where."""
    ledger = await ledger_with_holds(writer)
    paid = ledger["reversed"]
    await admin.execute("DELETE FROM outbox")
    entry = await entry_of_flow(admin, "cashout_return", paid.cashout_id)
    await shift_posting(admin, entry, FEE_REVENUE, CASHOUT_CLEARING, -1)
    await set_data(admin, "cashout_return", paid.cashout_id, amount=401, fee=3)
    results = await audit(admin)
    assert failing(results) == {"reversals_mirror_their_cashouts"}
    [example] = results["reversals_mirror_their_cashouts"].examples
    assert example["entry_id"] == str(entry)
    assert f"{FEE_REVENUE}:-4" in example["cashout_mirrored"]
    assert f"{FEE_REVENUE}:-3" in example["posted"]


async def test_a_reversal_of_a_cash_out_never_paid_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """Money credited back for a hold the bank returned before it was ever posted."""
    ledger = await ledger_with_holds(writer)
    hold, w = ledger["returned"], ledger["wallet"]
    entry = uuid.uuid4()
    await admin.execute(
        "INSERT INTO journal_entries (id, flow, idempotency_key) VALUES ($1, 'cashout_return', $2)",
        entry,
        hold.cashout_id,
    )
    for seq, (account, amount) in enumerate(((w, 2_020), (CASHOUT_CLEARING, -2_000))):
        await admin.execute(
            "INSERT INTO postings (entry_id, seq, account_id, currency, amount)"
            " VALUES ($1, $2, $3, 'EUR', $4)",
            entry,
            seq,
            account,
            amount,
        )
    await admin.execute(
        "INSERT INTO postings (entry_id, seq, account_id, currency, amount)"
        " VALUES ($1, 2, $2, 'EUR', -20)",
        entry,
        FEE_REVENUE,
    )
    for account, amount in ((w, 2_020), (CASHOUT_CLEARING, -2_000), (FEE_REVENUE, -20)):
        await admin.execute(
            "UPDATE balances SET balance = balance + $2 WHERE account_id = $1 AND shard ="
            " (SELECT min(shard) FROM balances WHERE account_id = $1)",
            account,
            amount,
        )
    results = await audit(admin)
    # Its return's record says voided, with no entry: this one is nobody's.
    assert failing(results) == {"reversals_mirror_their_cashouts", "entries_have_records"}
    [example] = results["reversals_mirror_their_cashouts"].examples
    assert (example["entry_id"], example["cashout_entries"]) == (str(entry), 0)


async def test_a_hold_that_is_not_its_records_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await ledger_with_holds(writer)
    await admin.execute("DELETE FROM outbox")
    pending = ledger["pending"].cashout_id
    # Amount and fee swapped a little: the wallet holds the same, the result says otherwise.
    await admin.execute(
        "UPDATE holds SET amount = amount - 1, fee = fee + 1 WHERE cashout_id = $1", pending
    )
    results = await audit(admin)
    assert failing(results) == {"holds_match_their_records"}
    assert results["holds_match_their_records"].examples == [
        {
            "side": "record",
            "flow": "cashout",
            "cashout_id": str(pending),
            "status": "pending",
            "void_reason": None,
        }
    ]
    await admin.execute(
        "UPDATE holds SET amount = amount + 1, fee = fee - 1 WHERE cashout_id = $1", pending
    )
    assert failing(await audit(admin)) == set()
    # A hold nobody approved: its cash-out's record is gone.
    await admin.execute(
        "DELETE FROM idempotency_records WHERE flow = 'cashout' AND key = $1", pending
    )
    results = await audit(admin)
    assert failing(results) == {"holds_match_their_records"}
    assert [e["side"] for e in results["holds_match_their_records"].examples] == ["hold"]


async def test_a_returned_hold_said_to_have_expired_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await ledger_with_holds(writer)
    await admin.execute(
        "UPDATE holds SET void_reason = 'expired' WHERE cashout_id = $1",
        ledger["returned"].cashout_id,
    )
    results = await audit(admin)
    assert failing(results) == {"holds_match_their_records"}
    [example] = results["holds_match_their_records"].examples
    assert (example["flow"], example["void_reason"]) == ("cashout_return", "expired")


async def test_a_held_result_with_an_entry_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await ledger_with_holds(writer)
    settle_entry = await entry_of_flow(admin, "cashout_settle", ledger["settled"].cashout_id)
    await admin.execute(
        "UPDATE idempotency_records SET journal_entry_id = $2 WHERE flow = 'cashout' AND key = $1",
        ledger["pending"].cashout_id,
        settle_entry,
    )
    results = await audit(admin)
    assert failing(results) == {"records_have_outcomes", "entries_match_results"}
    [example] = results["records_have_outcomes"].examples
    assert (example["flow"], example["key"]) == ("cashout", str(ledger["pending"].cashout_id))


async def test_a_settle_record_answering_with_another_results_type_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await ledger_with_holds(writer)
    await admin.execute("DELETE FROM outbox")
    await admin.execute(
        "UPDATE idempotency_records SET result_topic = $2, result_payload = convert_to(jsonb_set("
        "convert_from(result_payload, 'UTF8')::jsonb, '{type}', '\"cashout.reversed\"')::text,"
        " 'UTF8') WHERE flow = 'cashout_settle' AND key = $1",
        ledger["settled"].cashout_id,
        PREFIX + "cashout.reversed",
    )
    results = await audit(admin)
    assert failing(results) == {"records_keep_their_results", "entries_match_results"}


async def test_expiry_events_are_accepted_only_as_their_holds_once(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await ledger_with_holds(writer)
    expired = ledger["expired"].cashout_id
    # The voided event of a return has its record; the only unrecorded one is the expiry's.
    row = await admin.fetchrow(
        "SELECT event_id, topic, key, payload FROM outbox o WHERE topic = $1 AND NOT EXISTS"
        " (SELECT 1 FROM idempotency_records r WHERE r.result_event_id = o.event_id)",
        PREFIX + "cashout.voided",
    )
    assert row is not None
    assert orjson.loads(row["payload"])["data"]["cashout_id"] == str(expired)
    insert = "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4)"
    # Published twice as two events: one expiry, two answers.
    await admin.execute(insert, uuid.uuid4(), row["topic"], row["key"], row["payload"])
    results = await audit(admin)
    assert failing(results) == {"outbox_rows_match_records"}
    assert len(results["outbox_rows_match_records"].examples) == 2
    await admin.execute("DELETE FROM outbox WHERE payload = $1", row["payload"])
    assert failing(await audit(admin)) == set()
    # An expiry of another amount than its hold's, or of a hold that did not expire.
    event = orjson.loads(row["payload"])
    wrong = [
        {**event, "data": {**event["data"], "amount": 999}},
        {**event, "data": {**event["data"], "cashout_id": str(ledger["returned"].cashout_id)}},
        {**event, "data": {**event["data"], "reason": "returned"}},
    ]
    for payload in wrong:
        await admin.execute(insert, uuid.uuid4(), row["topic"], row["key"], orjson.dumps(payload))
        assert failing(await audit(admin)) == {"outbox_rows_match_records"}, payload
        await admin.execute("DELETE FROM outbox")
    # An unrecorded answer that is no rejection: a hold the ledger never placed.
    held = orjson.dumps({"type": "cashout.held", "data": {"cashout_id": str(uuid.uuid4())}})
    await admin.execute(insert, uuid.uuid4(), PREFIX + "cashout.held", b"k", held)
    assert failing(await audit(admin)) == {"outbox_rows_match_records"}


# -- merchants (DESIGN.md §5.2) -----------------------------------------------------------------


async def merchant_ledger(writer: LedgerWriter) -> dict[str, Any]:
    """Payments into three merchants: `shop` on the default fee (150 bps + 30), `free` with a
    fee of 0 set by operations, `kiosk` with a fixed fee above a small payment's amount (all of
    it is fee: the merchant gets nothing). Refunded in part, in full in two steps of one batch,
    and not at all; rejections, a replay and a conflict. The shop also sends a transfer: it
    counts toward its totals, its refunds do not."""
    fees = LedgerWriter(writer.pool, writer.limits, default_fee=FeeSchedule(150, 30))
    alice, bob = onboarding(), onboarding()
    shop, free, kiosk = merchant(), merchant(), merchant()
    wa, wb = wallet_of(alice), wallet_of(bob)
    await apply_all(fees, alice, bob, shop, free, kiosk, cashin(wa, 100_000), cashin(wb, 50_000))
    async with writer.pool.acquire() as conn:
        await set_merchant_fee(conn, free.customer_id, 0, 0, "ops-test")
        await set_merchant_fee(conn, kiosk.customer_id, 0, 30, "ops-test")
    ledger: dict[str, Any] = {
        "alice": wa,
        "bob": wb,
        "shop": wallet_of(shop),
        "kiosk_customer": kiosk.customer_id,
        "partial": payment(wa, wallet_of(shop), 10_000),  # fee 180
        "full": payment(wb, wallet_of(shop), 5_000),  # fee 75 + 30
        "kept": payment(wa, wallet_of(shop), 7_777),  # fee 116 + 30
        "free": payment(wa, wallet_of(free), 1_000),  # fee 0
        "all_fee": payment(wb, wallet_of(kiosk), 20),  # fee min(20, 30)
    }
    names = ("partial", "full", "kept", "free", "all_fee")
    paid = await apply_all(fees, *(ledger[k] for k in names), payment(wa, wb, 100))
    assert [o.kind for o in paid] == [OutcomeKind.COMPLETED] * 5 + [OutcomeKind.REJECTED]
    assert paid[-1].reason == "not_a_merchant"
    ledger |= {
        "partial_refund": refund(ledger["partial"], 3_333),  # fee back 59
        "full_first": refund(ledger["full"], 2_000),  # fee back 42
        "full_rest": refund(ledger["full"], 3_000),  # fee back 63
        "free_refund": refund(ledger["free"], 400),  # no fee back
        "all_fee_refund": refund(ledger["all_fee"]),  # the fee back, nothing from the kiosk
    }
    names = ("partial_refund", "full_first", "full_rest", "free_refund", "all_fee_refund")
    refunded = await apply_all(
        fees,
        *(ledger[k] for k in names),
        refund(ledger["kept"], 7_778),
        refund(ledger["kept"]).model_copy(update={"payment_id": uuid.uuid4()}),
        transfer(ledger["shop"], wa, 500),
    )
    assert [o.kind for o in refunded] == [OutcomeKind.COMPLETED] * 5 + [
        OutcomeKind.REJECTED
    ] * 2 + [OutcomeKind.COMPLETED]
    assert [o.reason for o in refunded[5:7]] == ["refund_exceeds_payment", "payment_not_found"]
    again = await apply_all(
        fees,
        ledger["partial"],
        ledger["partial_refund"],
        ledger["partial_refund"].model_copy(update={"amount": 3_334}),
    )
    assert [o.kind for o in again] == [
        OutcomeKind.REPLAYED,
        OutcomeKind.REPLAYED,
        OutcomeKind.CONFLICT,
    ]
    return ledger


async def test_an_honest_merchant_ledger_passes_even_once_the_outbox_is_pruned(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await merchant_ledger(writer)
    await ledger_with_holds(writer)
    await honest_ledger(writer)
    assert failing(await audit(admin)) == set()
    rows = {
        r["payment_id"]: tuple(r)[1:]
        for r in await admin.fetch(
            "SELECT payment_id, amount, fee, refunded, fee_returned FROM payments"
        )
    }
    assert rows == {
        ledger["partial"].payment_id: (10_000, 180, 3_333, 59),
        ledger["full"].payment_id: (5_000, 105, 5_000, 105),
        ledger["kept"].payment_id: (7_777, 146, 0, 0),
        ledger["free"].payment_id: (1_000, 0, 400, 0),
        ledger["all_fee"].payment_id: (20, 20, 20, 20),
    }
    # The shop's totals count its transfer only, not its refunds.
    out = await admin.fetchval(
        "SELECT out_day_total FROM balances WHERE account_id = $1", ledger["shop"]
    )
    assert out == 500
    await admin.execute("DELETE FROM outbox")
    assert failing(await audit(admin)) == set()


async def test_refunds_counted_toward_the_merchants_totals_are_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await merchant_ledger(writer)
    refunded = 3_333 - 59 + 2_000 - 42 + 3_000 - 63
    await admin.execute(
        "UPDATE balances SET out_day_total = out_day_total + $2,"
        " out_month_total = out_month_total + $2 WHERE account_id = $1",
        ledger["shop"],
        refunded,
    )
    results = await audit(admin)
    assert failing(results) == {"outgoing_totals_match_debits"}
    [example] = results["outgoing_totals_match_debits"].examples
    assert (example["outgoing_day"], example["debits_day"]) == (500 + refunded, 500)
    # A refund's entry said to have counted toward a day.
    await admin.execute(
        "UPDATE balances SET out_day_total = out_day_total - $2,"
        " out_month_total = out_month_total - $2 WHERE account_id = $1",
        ledger["shop"],
        refunded,
    )
    await admin.execute(
        "UPDATE journal_entries SET out_day = (now() AT TIME ZONE 'UTC')::date"
        " WHERE flow = 'refund' AND idempotency_key = $1",
        ledger["full_rest"].refund_id,
    )
    results = await audit(admin)
    assert failing(results) == {"refunds_add_up_to_their_payments"}
    [example] = results["refunds_add_up_to_their_payments"].examples
    assert example["refund_id"] == str(ledger["full_rest"].refund_id)
    assert example["counted_on"] is not None


async def test_a_payment_entry_and_record_that_took_another_fee_are_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """The payment's record and entry agree with each other (both rewritten: one more of the
    amount went to fee revenue); only its payments row still says what the fee was."""
    ledger = await merchant_ledger(writer)
    kept = ledger["kept"]
    await admin.execute("DELETE FROM outbox")
    entry = await entry_of_flow(admin, "payment", kept.payment_id)
    await shift_posting(admin, entry, ledger["shop"], FEE_REVENUE, 1)
    await set_data(admin, "payment", kept.payment_id, fee=147)
    results = await audit(admin)
    assert failing(results) == {"payments_have_their_entry", "fee_revenue_matches_payments"}
    [example] = results["payments_have_their_entry"].examples
    assert (example["side"], example["payment_id"], example["entry_id"]) == (
        "payment",
        str(kept.payment_id),
        str(entry),
    )
    assert f"{FEE_REVENUE}:146" in example["payment_implies"]
    assert f"{FEE_REVENUE}:147" in example["posted"]
    [fees] = results["fee_revenue_matches_payments"].examples
    assert fees["fee_revenue_taken"] == fees["payments_fee"] + 1
    # Only the record rewritten: the entry no longer posts what its result says either.
    await shift_posting(admin, entry, FEE_REVENUE, ledger["shop"], 1)
    assert failing(await audit(admin)) == {"payments_have_their_entry", "entries_match_results"}


async def test_a_payment_into_a_wallet_that_is_no_merchants_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """Entry, record and payments row all rewritten to pay Bob, a consumer, instead of the
    shop: they agree, and a consumer is never paid."""
    ledger = await merchant_ledger(writer)
    kept = ledger["kept"]
    await admin.execute("DELETE FROM outbox")
    entry = await entry_of_flow(admin, "payment", kept.payment_id)
    await move_posting(admin, entry, ledger["shop"], ledger["bob"])
    await set_data(admin, "payment", kept.payment_id, merchant_account_id=str(ledger["bob"]))
    await admin.execute(
        "UPDATE payments SET merchant_account_id = $2 WHERE payment_id = $1",
        kept.payment_id,
        ledger["bob"],
    )
    results = await audit(admin)
    assert failing(results) == {"payments_have_their_entry"}
    [example] = results["payments_have_their_entry"].examples
    assert (example["payment_id"], example["merchant_kind"]) == (str(kept.payment_id), "consumer")
    await move_posting(admin, entry, ledger["bob"], ledger["shop"])
    await set_data(admin, "payment", kept.payment_id, merchant_account_id=str(ledger["shop"]))
    await admin.execute(
        "UPDATE payments SET merchant_account_id = $2 WHERE payment_id = $1",
        kept.payment_id,
        ledger["shop"],
    )
    assert failing(await audit(admin)) == set()
    # A merchant turned into a consumer behind the ledger's back (the app role may not).
    await admin.execute(
        "UPDATE customers SET kind = 'consumer' WHERE id = $1", ledger["kiosk_customer"]
    )
    results = await audit(admin)
    assert failing(results) == {"payments_have_their_entry"}
    [example] = results["payments_have_their_entry"].examples
    assert example["payment_id"] == str(ledger["all_fee"].payment_id)


async def test_a_payment_entry_without_its_payment_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    ledger = await merchant_ledger(writer)
    kept = ledger["kept"]
    entry = await entry_of_flow(admin, "payment", kept.payment_id)
    await admin.execute("DELETE FROM payments WHERE payment_id = $1", kept.payment_id)
    results = await audit(admin)
    assert failing(results) == {"payments_have_their_entry", "fee_revenue_matches_payments"}
    assert results["payments_have_their_entry"].examples == [
        {
            "side": "entry",
            "payment_id": str(kept.payment_id),
            "entry_id": str(entry),
            "payment_implies": None,
            "posted": None,
            "merchant_kind": None,
        }
    ]
    [fees] = results["fee_revenue_matches_payments"].examples
    assert fees["fee_revenue_taken"] - fees["payments_fee"] == 146


async def test_a_payment_that_lost_count_of_its_refunds_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """3,300 refunded of 10,000 instead of 3,333: the fee returned is the same (floor of 59.4
    and of 59.994), so the row still satisfies its own CHECK."""
    ledger = await merchant_ledger(writer)
    partial = ledger["partial"]
    await admin.execute(
        "UPDATE payments SET refunded = 3300 WHERE payment_id = $1", partial.payment_id
    )
    results = await audit(admin)
    assert failing(results) == {"refunds_add_up_to_their_payments"}
    assert results["refunds_add_up_to_their_payments"].examples == [
        {
            "side": "payment",
            "payment_id": str(partial.payment_id),
            "refund_id": None,
            "payment_amount": 10_000,
            "refunded": 3_300,
            "refunds": 3_333,
            "fee_returned": 59,
            "fee_due": 59,
            "fee_taken": 59,
            "counted_on": None,
        }
    ]


async def test_a_refund_that_took_back_more_fee_than_the_floor_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """The refund's record and entry agree (both rewritten: fee revenue gave back 60, the shop
    1 less); the payment and the floor rule say 59."""
    ledger = await merchant_ledger(writer)
    back = ledger["partial_refund"]
    await admin.execute("DELETE FROM outbox")
    entry = await entry_of_flow(admin, "refund", back.refund_id)
    await shift_posting(admin, entry, FEE_REVENUE, ledger["shop"], 1)
    await set_data(admin, "refund", back.refund_id, fee_returned=60)
    results = await audit(admin)
    assert failing(results) == {"refunds_add_up_to_their_payments", "fee_revenue_matches_payments"}
    examples = {e["side"]: e for e in results["refunds_add_up_to_their_payments"].examples}
    assert (examples["refund"]["fee_returned"], examples["refund"]["fee_due"]) == (60, 59)
    assert (examples["payment"]["fee_returned"], examples["payment"]["fee_taken"]) == (59, 60)
    [fees] = results["fee_revenue_matches_payments"].examples
    assert fees["fee_revenue_returned"] == fees["payments_fee_returned"] + 1


async def test_refunds_above_their_payment_are_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """The full refund's second step rewritten to 3,001 (record and entry agree, the shop pays
    the extra 1): its refunds sum to 5,001 of a payment of 5,000."""
    ledger = await merchant_ledger(writer)
    rest, full = ledger["full_rest"], ledger["full"]
    await admin.execute("DELETE FROM outbox")
    entry = await entry_of_flow(admin, "refund", rest.refund_id)
    await shift_posting(admin, entry, ledger["shop"], ledger["bob"], 1)
    await set_data(admin, "refund", rest.refund_id, amount=3_001, refunded_total=5_001)
    results = await audit(admin)
    assert failing(results) == {"refunds_add_up_to_their_payments"}
    examples = {e["side"]: e for e in results["refunds_add_up_to_their_payments"].examples}
    assert examples["refund"]["refund_id"] == str(rest.refund_id)
    assert (examples["refund"]["refunded"], examples["refund"]["payment_amount"]) == (5_001, 5_000)
    assert examples["payment"]["payment_id"] == str(full.payment_id)
    assert (examples["payment"]["refunded"], examples["payment"]["refunds"]) == (5_000, 5_001)


async def test_a_refund_to_someone_who_did_not_pay_is_seen(
    writer: LedgerWriter, admin: asyncpg.Connection
) -> None:
    """Bob paid; his refund's entry and record rewritten to credit Alice instead."""
    ledger = await merchant_ledger(writer)
    first = ledger["full_first"]
    await admin.execute("DELETE FROM outbox")
    entry = await entry_of_flow(admin, "refund", first.refund_id)
    await move_posting(admin, entry, ledger["bob"], ledger["alice"])
    await set_data(admin, "refund", first.refund_id, to_account_id=str(ledger["alice"]))
    results = await audit(admin)
    assert failing(results) == {"refunds_add_up_to_their_payments"}
    [example] = results["refunds_add_up_to_their_payments"].examples
    assert (example["side"], example["refund_id"]) == ("refund", str(first.refund_id))
    # A refund of a payment that does not exist.
    await move_posting(admin, entry, ledger["alice"], ledger["bob"])
    await set_data(admin, "refund", first.refund_id, to_account_id=str(ledger["bob"]))
    assert failing(await audit(admin)) == set()
    await set_data(admin, "refund", first.refund_id, payment_id=str(uuid.uuid4()))
    results = await audit(admin)
    assert failing(results) == {"refunds_add_up_to_their_payments"}
    assert {e["side"] for e in results["refunds_add_up_to_their_payments"].examples} == {
        "refund",
        "payment",
    }
