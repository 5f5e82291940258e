"""No read scans more than its page (ledger_db/reads.py, migration 0008): the plans of the read
API's queries on a ledger large enough for the planner to mean it.

2,000 wallets and ~204,000 postings (a cash-in per wallet, then 100,000 transfers, one in twenty
with the same busy wallet), written in a few set-based statements as the schema owner with every
journal trigger on, then VACUUM ANALYZE. Each query of reads.py is then EXPLAINed as the reader
role with realistic parameters (the busy wallet, a cursor in the middle of its history, a day's
range, a command's key), both as a custom plan (the values known) and as the generic plan that
asyncpg's statement cache ends up running: no sequential scan of a ledger table, the history
through postings_account_history_idx, and a history page reading a page of that index, not the
wallet's whole history (EXPLAIN ANALYZE).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from ledgerflow.ledger_db import reads
from ledgerflow.ledger_db.apply import LedgerWriter
from ledgerflow.ledger_db.rules import AccountKind, TierLimits, house_account_id
from ledgerflow.ledger_db.unit_of_work import create_pool
from ledgerflow.testkit.commands import apply_all, cashin, onboarding, wallet_of
from ledgerflow.testkit.plugin import (
    IsolatedDatabase,
    create_test_database,
    drop_test_database,
)

pytestmark = pytest.mark.integration

WALLETS = 2_000
TRANSFERS = 100_000
BUSY_EVERY = 20  # one transfer in twenty sends to, or from, wallet 1
FUNDING = 10_000_000  # each wallet's opening cash-in: no transfer overdraws it
STEP_S = 20  # seconds between consecutive entries: ~24 days of history
LEDGER_TABLES = frozenset(
    {"postings", "journal_entries", "accounts", "balances", "customers", "idempotency_records"}
)
HISTORY_INDEX = "postings_account_history_idx"
PLAN_MODES = ("force_custom_plan", "force_generic_plan")


def md5_uuid(text: str) -> uuid.UUID:
    """What `md5(text)::uuid` is in PostgreSQL: the bulk rows' ids, known on both sides."""
    return uuid.UUID(hashlib.md5(text.encode()).hexdigest())  # an id, not a hash


def wallet_id(n: int) -> uuid.UUID:
    return md5_uuid(f"wallet:{n}")


# Every move: the cash-ins first (k = 1..W, from the house clearing account into wallet k), then
# the transfers between wallets; every twentieth with wallet 1, alternately sent and received.
MOVES = """
CREATE TEMP TABLE moves (
    k bigint, entry_id uuid, command_id uuid, flow text, at timestamptz, debit uuid, credit uuid,
    amount bigint
) ON COMMIT DROP
"""

FILL_MOVES = """
WITH k AS (SELECT k::bigint AS k FROM generate_series(1, $1::int + $2::int) AS k),
ends AS (
    SELECT k,
           CASE WHEN k <= $1 THEN NULL
                WHEN k % $3 = 0 AND k % (2 * $3) = 0 THEN 1
                WHEN k % $3 = 0 THEN 2 + k % ($1 - 1)
                ELSE 1 + (k * 7919) % $1 END AS src,
           CASE WHEN k <= $1 THEN k
                WHEN k % $3 = 0 AND k % (2 * $3) = 0 THEN 2 + k % ($1 - 1)
                WHEN k % $3 = 0 THEN 1
                ELSE 1 + (k * 104729 + 13) % $1 END AS dst
    FROM k
)
INSERT INTO moves
SELECT k,
       md5('entry:' || k)::uuid,
       md5('command:' || k)::uuid,
       CASE WHEN k <= $1 THEN 'cashin' ELSE 'transfer' END,
       $5::timestamptz + k * $6::int * interval '1 second',
       CASE WHEN src IS NULL THEN $7::uuid ELSE md5('wallet:' || src)::uuid END,
       md5('wallet:' || CASE WHEN dst = src THEN 1 + dst % $1 ELSE dst END)::uuid,
       CASE WHEN k <= $1 THEN $4::bigint ELSE 1 + k % 97 END
FROM ends
"""

CUSTOMERS = """
INSERT INTO customers (id, tier, created_at, subject, kind)
SELECT md5('customer:' || n)::uuid, 'basic', $2::timestamptz, 'plan-customer-' || n, 'consumer'
FROM generate_series(1, $1::int) AS n
"""

ACCOUNTS = """
INSERT INTO accounts (id, kind, currency, customer_id, created_at)
SELECT md5('wallet:' || n)::uuid, 'wallet', 'EUR', md5('customer:' || n)::uuid, $2::timestamptz
FROM generate_series(1, $1::int) AS n
"""

ENTRIES = """
INSERT INTO journal_entries (id, flow, idempotency_key, created_at)
SELECT entry_id, flow, command_id, at FROM moves ORDER BY k
"""

# Both postings of each entry; the ids (identity) follow (posted_at, seq), as the writer's do, and
# so does each wallet's running balance. House accounts keep none (their balance is sharded).
POSTINGS = """
WITH lines AS (
    SELECT k, entry_id, 0 AS seq, debit AS account_id, -amount AS amount, at FROM moves
    UNION ALL
    SELECT k, entry_id, 1, credit, amount, at FROM moves
)
INSERT INTO postings (entry_id, seq, account_id, currency, amount, posted_at, balance_after)
SELECT entry_id, seq, account_id, 'EUR', amount, at,
       CASE WHEN account_id <> $1::uuid
            THEN sum(amount) OVER (PARTITION BY account_id ORDER BY k, seq) END
FROM lines
ORDER BY k, seq
"""

BALANCES = """
INSERT INTO balances (account_id, kind, shard, balance, last_posted_at)
SELECT p.account_id, 'wallet', 0, sum(p.amount), max(p.posted_at)
FROM postings p JOIN moves m ON m.entry_id = p.entry_id
WHERE p.account_id <> $1::uuid
GROUP BY p.account_id
"""

HOUSE_BALANCE = """
UPDATE balances SET balance = balance - $2::bigint * $3::int WHERE account_id = $1 AND shard = 0
"""

RECORDS = """
INSERT INTO idempotency_records (flow, key, content_hash, outcome, journal_entry_id, result_topic,
                                 result_event_id, result_payload, subject, created_at)
SELECT flow, command_id, sha256(convert_to(command_id::text, 'UTF8')), 'completed', entry_id,
       'ledger.' || flow || '.results', md5('event:' || k)::uuid,
       convert_to('{"specversion":"1.0"}', 'UTF8'), 'plan-customer-' || k, at
FROM moves
"""


@dataclass(frozen=True, slots=True)
class Ledger:
    reader_url: str
    busy: uuid.UUID
    busy_postings: int
    middle: reads.Position  # a posting halfway through the busy wallet's history
    command: uuid.UUID  # a transfer's id, recorded


async def build_ledger(database: IsolatedDatabase) -> Ledger:
    # One wallet the writer opens and funds: the house accounts exist as the writer makes them.
    pool = await create_pool(database.app_url, size_max=1)
    try:
        first = onboarding()
        await apply_all(
            LedgerWriter(pool, {"basic": TierLimits()}), first, cashin(wallet_of(first), 1)
        )
    finally:
        await pool.close()
    house = house_account_id(AccountKind.CASHIN_CLEARING, "EUR")
    owner = await asyncpg.connect(database.owner_url)
    try:
        start = await owner.fetchval("SELECT now() - interval '30 days'")
        async with owner.transaction():
            # Entries and their postings in one transaction: the journal's triggers hold them to
            # it, and check every statement's postings balance per entry.
            await owner.execute(MOVES)
            await owner.execute(
                FILL_MOVES, WALLETS, TRANSFERS, BUSY_EVERY, FUNDING, start, STEP_S, house
            )
            await owner.execute(CUSTOMERS, WALLETS, start)
            await owner.execute(ACCOUNTS, WALLETS, start)
            await owner.execute(ENTRIES)
            await owner.execute(POSTINGS, house)
            await owner.execute(BALANCES, house)
            await owner.execute(HOUSE_BALANCE, house, FUNDING, WALLETS)
            await owner.execute(RECORDS)
        for table in sorted(LEDGER_TABLES):
            await owner.execute(f"VACUUM (ANALYZE) {table}")
        busy = wallet_id(1)
        count = await owner.fetchval("SELECT count(*) FROM postings WHERE account_id = $1", busy)
        middle = await owner.fetchrow(
            "SELECT posted_at, id FROM postings WHERE account_id = $1"
            " ORDER BY posted_at, id OFFSET $2 LIMIT 1",
            busy,
            count // 2,
        )
        command = await owner.fetchval(
            "SELECT key FROM idempotency_records WHERE flow = 'transfer' ORDER BY created_at"
            " OFFSET $1 LIMIT 1",
            TRANSFERS // 2,
        )
    finally:
        await owner.close()
    return Ledger(
        reader_url=database.reader_url,
        busy=busy,
        busy_postings=count,
        middle=reads.Position(middle["posted_at"], middle["id"]),
        command=command,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(postgres: Any, ledgerflow_db_template: str) -> AsyncIterator[Ledger]:
    """One large ledger for the module (its database cloned from the template, like `database`):
    the tests only read it."""
    database = await create_test_database(postgres, ledgerflow_db_template)
    try:
        yield await build_ledger(database)
    finally:
        await drop_test_database(postgres, database.name)


@pytest_asyncio.fixture(loop_scope="session")
async def reader(ledger: Ledger) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(ledger.reader_url)
    try:
        yield conn
    finally:
        await conn.close()


def literal(value: object) -> str:
    """A parameter of EXECUTE as SQL (the values are the test's own)."""
    if isinstance(value, bool | int):
        return str(int(value))
    if isinstance(value, datetime):
        value = value.isoformat()
    return "'" + str(value).replace("'", "''") + "'"


async def explain(
    conn: asyncpg.Connection, query: str, args: tuple[Any, ...], *, mode: str, analyze: bool
) -> dict[str, Any]:
    """The plan PostgreSQL runs for the prepared `query` with `args`: under `mode`, a custom plan
    (planned for these values) or the generic one (for any; what a statement cache that runs it
    again and again is given once the generic plan costs no more)."""
    await conn.execute(f"SET plan_cache_mode = {mode}")
    await conn.execute(f"PREPARE planned AS {query}")
    try:
        options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
        text = await conn.fetchval(
            f"EXPLAIN ({options}) EXECUTE planned({', '.join(literal(a) for a in args)})"
        )
    finally:
        await conn.execute("DEALLOCATE planned")
        await conn.execute("RESET plan_cache_mode")
    return json.loads(text)[0]["Plan"]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def render(plan: dict[str, Any], depth: int = 0) -> str:
    """The plan's nodes, one a line: for the assertions' messages."""
    keys = ("Relation Name", "Alias", "Index Name", "Actual Rows", "Actual Loops")
    line = "  " * depth + plan["Node Type"]
    line += "".join(f" {key}={plan[key]}" for key in keys if key in plan)
    return "\n".join([line, *(render(child, depth + 1) for child in plan.get("Plans", ()))])


def assert_no_ledger_scan(plan: dict[str, Any]) -> None:
    scanned = {
        node["Relation Name"]
        for node in nodes(plan)
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in LEDGER_TABLES
    }
    assert not scanned, f"sequential scan of {sorted(scanned)}:\n{render(plan)}"


def assert_reads_history_index(plan: dict[str, Any], *, ordered: bool) -> dict[str, Any]:
    """The wallet's own postings `p` (not a counterparty's look-up) come from one range of the
    history index: an index scan in its order when `ordered` (a page stops after its rows), or
    at least a bitmap of that range. Returns the index's node."""
    wallets = [
        node
        for node in nodes(plan)
        if node.get("Relation Name") == "postings" and node.get("Alias") in ("p", "postings")
    ]
    assert len(wallets) == 1, render(plan)
    via = [node for node in nodes(wallets[0]) if node.get("Index Name") == HISTORY_INDEX]
    assert len(via) == 1, render(plan)
    if ordered:
        assert via[0] is wallets[0], render(plan)
        assert via[0]["Node Type"] in ("Index Scan", "Index Only Scan"), render(plan)
    return via[0]


def rows_read(node: dict[str, Any]) -> int:
    return int(node["Actual Rows"] * node["Actual Loops"])


async def test_no_read_scans_more_than_its_page(ledger: Ledger, reader: asyncpg.Connection) -> None:
    assert ledger.busy_postings > TRANSFERS // BUSY_EVERY  # the busy wallet's history is long
    limit = reads.PAGE_LIMIT_DEFAULT
    middle = ledger.middle
    day_before = (middle.posted_at - timedelta(days=1), middle.posted_at)
    around = (middle.posted_at - timedelta(days=2), middle.posted_at + timedelta(days=2))
    busy = ledger.busy
    # (name, query, parameters, reads the history in the index's order)
    queries: list[tuple[str, str, tuple[Any, ...], bool | None]] = [
        ("wallet", reads.SELECT_WALLET, (busy,), None),
        ("wallet owner", reads.SELECT_WALLET_OWNER, (busy,), None),
        (
            "first page",
            reads.SELECT_PAGE,
            (busy, reads.TIME_MAX, 0, reads.TIME_MIN, reads.TIME_MAX, limit + 1),
            True,
        ),
        (
            "page at a cursor",
            reads.SELECT_PAGE,
            (busy, middle.posted_at, middle.posting_id, reads.TIME_MIN, reads.TIME_MAX, limit + 1),
            True,
        ),
        (
            "page at a cursor, in a range",
            reads.SELECT_PAGE,
            (busy, middle.posted_at, middle.posting_id, *around, limit + 1),
            True,
        ),
        (
            "statement range",
            reads.SELECT_RANGE,
            (busy, *day_before, reads.STATEMENT_ENTRIES_MAX + 1),
            False,  # a statement sorts its range: a bitmap of it is as good
        ),
        ("last before", reads.SELECT_LAST_BEFORE, (busy, middle.posted_at), True),
        ("sum up to", reads.SUM_UP_TO, (busy, middle.posted_at, middle.posting_id), False),
        ("command", reads.SELECT_COMMAND, ("transfer", ledger.command), None),
    ]
    for mode in PLAN_MODES:
        for name, query, args, ordered in queries:
            plan = await explain(reader, query, args, mode=mode, analyze=False)
            where = f"{name} ({mode})"
            try:
                assert_no_ledger_scan(plan)
                if ordered is not None:
                    assert_reads_history_index(plan, ordered=ordered)
            except AssertionError as error:
                raise AssertionError(f"{where}: {error}") from None


async def test_a_history_page_reads_a_page_of_the_index(
    ledger: Ledger, reader: asyncpg.Connection
) -> None:
    """EXPLAIN ANALYZE: the history index hands over limit + 1 rows (the page and the probe for
    the next one), whatever the length of the wallet's history; a balance before an instant,
    one row; a statement, its range."""
    middle = ledger.middle
    busy = ledger.busy
    in_day = await reader.fetchval(
        "SELECT count(*) FROM postings"
        " WHERE account_id = $1 AND posted_at >= $2 AND posted_at < $3",
        busy,
        middle.posted_at - timedelta(days=1),
        middle.posted_at,
    )
    assert 0 < in_day < ledger.busy_postings // 4
    for mode in PLAN_MODES:
        for limit in (1, reads.PAGE_LIMIT_DEFAULT, reads.PAGE_LIMIT_MAX):
            for top in (reads.Position(reads.TIME_MAX, 0), middle):
                args = (busy, top.posted_at, top.posting_id, reads.TIME_MIN, reads.TIME_MAX)
                plan = await explain(
                    reader, reads.SELECT_PAGE, (*args, limit + 1), mode=mode, analyze=True
                )
                node = assert_reads_history_index(plan, ordered=True)
                assert rows_read(node) <= limit + 1, f"{mode}, limit {limit}:\n{render(plan)}"
        last = await explain(
            reader, reads.SELECT_LAST_BEFORE, (busy, middle.posted_at), mode=mode, analyze=True
        )
        assert rows_read(assert_reads_history_index(last, ordered=True)) == 1, render(last)
        statement = await explain(
            reader,
            reads.SELECT_RANGE,
            (busy, middle.posted_at - timedelta(days=1), middle.posted_at, 10_001),
            mode=mode,
            analyze=True,
        )
        node = assert_reads_history_index(statement, ordered=False)
        assert rows_read(node) == in_day, render(statement)
