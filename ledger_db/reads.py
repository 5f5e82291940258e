"""The read side (DESIGN.md §6): a wallet, its history, statements, balances at an instant and
command outcomes, as the read API and the CLI show them. One implementation for both.

Every read is one bounded index range: a wallet by its key, a page of its postings from
`postings_account_history_idx` ((account_id, posted_at, id): the order in which the wallet's money
moved, see migration 0008), a command by its idempotency key. Several reads that must agree (a
statement's opening balance, its entries and its closing balance) run in one REPEATABLE READ,
READ ONLY transaction, so that they see one snapshot of the ledger.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ledgerflow.contracts.topics import FLOWS, Flow

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

# Bounds of every list (TIGER_STYLE): a page, and a statement (its range and its entries).
PAGE_LIMIT_MAX = 200
PAGE_LIMIT_DEFAULT = 50
STATEMENT_DAYS_MAX = 366
STATEMENT_ENTRIES_MAX = 10_000
# Before this instant and after the far future, a time bound means nothing: rejected as invalid
# rather than passed to PostgreSQL (whose timestamptz range is wider than Python's datetime).
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9000, 1, 1, tzinfo=UTC)

_FLOW_BY_COMMAND_TYPE: dict[str, Flow] = {flow.command_topic: flow for flow in FLOWS}
_COMMAND_TYPE_BY_FLOW: dict[str, str] = {flow.name: flow.command_topic for flow in FLOWS}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What the wallet sent in its current day (month), against the tier's bound (None:
    unbounded)."""

    period: date
    total: int
    limit: int | None


@dataclass(frozen=True, slots=True)
class WalletView:
    account_id: UUID
    currency: str
    status: str
    kind: str
    tier: str
    owner: str | None
    balance: int
    held: int
    today: Outgoing
    month: Outgoing
    # False: no tier_limits row applies, so the wallet can send nothing (fails closed).
    limits_configured: bool

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True, slots=True)
class Position:
    """A posting's place in its wallet's history: the keyset of every page."""

    posted_at: datetime
    posting_id: int


@dataclass(frozen=True, slots=True)
class EntryLine:
    """One journal entry from the wallet's view."""

    journal_entry_id: UUID
    type: str  # the command's CloudEvents type, e.g. transfer.initiated
    id: UUID  # the command's id (its idempotency key)
    amount: int  # signed: positive credits the wallet
    counterparty_account_id: UUID | None  # the other wallet, if one took part
    balance_after: int
    created_at: datetime  # when it was posted
    position: Position


@dataclass(frozen=True, slots=True)
class Page:
    lines: list[EntryLine]
    # Where the next (older) page starts; None on the last page.
    next_position: Position | None


@dataclass(frozen=True, slots=True)
class Statement:
    account_id: UUID
    currency: str
    start: datetime
    end: datetime
    opening_balance: int
    closing_balance: int
    total_in: int
    total_out: int
    lines: list[EntryLine]  # oldest first


class StatementTooLargeError(ValueError):
    """More entries in the range than one statement carries."""


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    flow: str
    outcome: str
    subject: str | None
    result_topic: str
    payload: bytes  # the result event exactly as the relay published it


# Statement CSV columns (`ledgerflow statement --csv` and the API's text/csv).
CSV_COLUMNS = (
    "row",
    "created_at",
    "journal_entry_id",
    "type",
    "id",
    "amount",
    "counterparty_account_id",
    "balance_after",
)

SELECT_WALLET = """
SELECT a.id, a.currency, a.status, c.kind, c.tier, c.subject, b.balance, b.held,
       b.out_day, b.out_day_total, b.out_month, b.out_month_total,
       l.daily_out_max, l.monthly_out_max, l.tier IS NOT NULL AS limits_configured,
       (now() AT TIME ZONE 'UTC')::date AS today
FROM accounts a
JOIN customers c ON c.id = a.customer_id
JOIN balances b ON b.account_id = a.id AND b.shard = 0
LEFT JOIN LATERAL (
    SELECT tier, daily_out_max, monthly_out_max FROM tier_limits
    WHERE tier = c.tier AND currency IN (a.currency, '*')
    ORDER BY currency = '*'
    LIMIT 1
) l ON true
WHERE a.id = $1 AND a.kind = 'wallet'
"""

SELECT_WALLET_OWNER = """
SELECT c.subject, a.currency FROM accounts a JOIN customers c ON c.id = a.customer_id
WHERE a.id = $1 AND a.kind = 'wallet'
"""

# A page of a wallet's postings, newest first, strictly before a position ($2, $3), from $4
# (inclusive) to $5 (exclusive). The counterparty is the entry's other wallet posting (an entry
# has two or three postings: a primary-key range each).
# The entry lines of a wallet's postings `p`: the counterparty is the entry's other wallet
# posting (an entry has two or three postings: a primary-key range each).
_LINES = """
SELECT p.id, p.posted_at, p.entry_id, p.amount, p.balance_after, e.flow, e.idempotency_key,
       (SELECT q.account_id FROM postings q JOIN accounts qa ON qa.id = q.account_id
         WHERE q.entry_id = p.entry_id AND q.account_id <> p.account_id AND qa.kind = 'wallet'
         ORDER BY q.seq LIMIT 1) AS counterparty
FROM postings p JOIN journal_entries e ON e.id = p.entry_id
"""

# A page of a wallet's postings, newest first, strictly before a position ($2, $3), from $4
# (inclusive) to $5 (exclusive).
SELECT_PAGE = (
    _LINES
    + """
WHERE p.account_id = $1
  AND (p.posted_at, p.id) < ($2::timestamptz, $3::bigint)
  AND p.posted_at >= $4::timestamptz AND p.posted_at < $5::timestamptz
ORDER BY p.posted_at DESC, p.id DESC
LIMIT $6
"""
)

# The same range oldest first, for a statement.
SELECT_RANGE = (
    _LINES
    + """
WHERE p.account_id = $1 AND p.posted_at >= $2::timestamptz AND p.posted_at < $3::timestamptz
ORDER BY p.posted_at, p.id
LIMIT $4
"""
)

# The latest posting before an instant ($2, exclusive) and its balance after.
SELECT_LAST_BEFORE = """
SELECT p.id, p.posted_at, p.balance_after FROM postings p
WHERE p.account_id = $1 AND p.posted_at < $2::timestamptz
ORDER BY p.posted_at DESC, p.id DESC
LIMIT 1
"""

# The balance after a posting, summed: only for rows release 0.1 wrote (no stored
# balance_after), a range of the history index.
SUM_UP_TO = """
SELECT coalesce(sum(amount), 0)::bigint FROM postings
WHERE account_id = $1 AND (posted_at, id) <= ($2::timestamptz, $3::bigint)
"""

SELECT_COMMAND = """
SELECT flow, outcome, subject, result_topic, result_payload FROM idempotency_records
WHERE flow = $1 AND key = $2
"""


def command_flow(command_type: str) -> Flow | None:
    """The flow whose command has this CloudEvents type (`transfer.initiated`), or None."""
    return _FLOW_BY_COMMAND_TYPE.get(command_type)


def command_types() -> list[str]:
    return list(_FLOW_BY_COMMAND_TYPE)


async def wallet(conn: asyncpg.Connection | asyncpg.Pool, account_id: UUID) -> WalletView | None:
    row = await conn.fetchrow(SELECT_WALLET, account_id)
    if row is None:
        return None
    today: date = row["today"]
    month = today.replace(day=1)
    day_total = (
        row["out_day_total"] if row["out_day"] is not None and row["out_day"] >= today else 0
    )
    month_total = (
        row["out_month_total"] if row["out_month"] is not None and row["out_month"] >= month else 0
    )
    return WalletView(
        account_id=row["id"],
        currency=row["currency"].strip(),
        status=row["status"],
        kind=row["kind"],
        tier=row["tier"],
        owner=row["subject"],
        balance=row["balance"],
        held=row["held"],
        today=Outgoing(today, day_total, row["daily_out_max"]),
        month=Outgoing(month, month_total, row["monthly_out_max"]),
        limits_configured=row["limits_configured"],
    )


@dataclass(frozen=True, slots=True)
class WalletOwner:
    subject: str | None  # the identity provider's subject bound at onboarding
    currency: str


async def wallet_owner(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: UUID
) -> WalletOwner | None:
    """Who may read a wallet (None: no such wallet)."""
    row = await conn.fetchrow(SELECT_WALLET_OWNER, account_id)
    return None if row is None else WalletOwner(row["subject"], row["currency"].strip())


def _line(row: Any) -> EntryLine:
    return EntryLine(
        journal_entry_id=row["entry_id"],
        type=_COMMAND_TYPE_BY_FLOW.get(row["flow"], row["flow"]),
        id=row["idempotency_key"],
        amount=row["amount"],
        counterparty_account_id=row["counterparty"],
        balance_after=row["balance_after"],
        created_at=row["posted_at"],
        position=Position(row["posted_at"], row["id"]),
    )


async def _fill_balances(
    conn: asyncpg.Connection, account_id: UUID, rows: Sequence[Any], *, newest_first: bool
) -> list[EntryLine]:
    """Lines with every balance_after: rows written by release 0.1 have none stored; the oldest
    row's is then summed once and the others follow along the page."""
    if all(row["balance_after"] is not None for row in rows):
        return [_line(row) for row in rows]
    ordered = list(reversed(rows)) if newest_first else list(rows)
    first = ordered[0]
    running = first["balance_after"]
    if running is None:
        running = await conn.fetchval(SUM_UP_TO, account_id, first["posted_at"], first["id"])
    lines: list[EntryLine] = []
    for index, row in enumerate(ordered):
        if index:
            running = row["balance_after"]
            if running is None:
                running = lines[-1].balance_after + row["amount"]
        lines.append(_line({**dict(row), "balance_after": running}))
    return list(reversed(lines)) if newest_first else lines


async def history(
    conn: asyncpg.Connection,
    account_id: UUID,
    *,
    limit: int = PAGE_LIMIT_DEFAULT,
    before: Position | None = None,
    start: datetime = TIME_MIN,
    end: datetime = TIME_MAX,
) -> Page:
    """A page of the wallet's entries, newest first: strictly before `before` (a previous page's
    `next_position`), posted in [start, end). Entries posted after the first page was read
    never appear on a later one, and none is skipped or repeated."""
    assert 0 < limit <= PAGE_LIMIT_MAX, "pages are bounded"
    top = before or Position(TIME_MAX, 0)
    rows = await conn.fetch(
        SELECT_PAGE, account_id, top.posted_at, top.posting_id, start, end, limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    lines = await _fill_balances(conn, account_id, rows, newest_first=True) if rows else []
    return Page(lines, lines[-1].position if more else None)


async def balance_before(conn: asyncpg.Connection, account_id: UUID, instant: datetime) -> int:
    """The wallet's posted balance just before `instant`: its last posting's balance after."""
    row = await conn.fetchrow(SELECT_LAST_BEFORE, account_id, instant)
    if row is None:
        return 0
    if row["balance_after"] is not None:
        return int(row["balance_after"])
    return int(await conn.fetchval(SUM_UP_TO, account_id, row["posted_at"], row["id"]))


async def balance_at(conn: asyncpg.Connection, account_id: UUID, instant: datetime) -> int:
    """The posted balance at `instant`: every posting up to and including it."""
    return await balance_before(conn, account_id, instant + timedelta(microseconds=1))


async def statement(
    conn: asyncpg.Connection,
    account_id: UUID,
    currency: str,
    start: datetime,
    end: datetime,
    *,
    entries_max: int = STATEMENT_ENTRIES_MAX,
) -> Statement:
    """Opening balance at `start`, every entry in [start, end), closing balance at `end`, in
    one snapshot. Raises `StatementTooLargeError` past `entries_max` entries."""
    assert start < end, "a statement covers a range"
    assert end - start <= timedelta(days=STATEMENT_DAYS_MAX), "statement ranges are bounded"
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        opening = await balance_before(conn, account_id, start)
        rows = await conn.fetch(SELECT_RANGE, account_id, start, end, entries_max + 1)
        if len(rows) > entries_max:
            raise StatementTooLargeError(
                f"more than {entries_max} entries between {start.isoformat()} and "
                f"{end.isoformat()}: ask for a shorter range, or page through the entries"
            )
        lines = await _fill_balances(conn, account_id, rows, newest_first=False) if rows else []
        closing = await balance_before(conn, account_id, end)
    total_in = sum(line.amount for line in lines if line.amount > 0)
    total_out = -sum(line.amount for line in lines if line.amount < 0)
    # The running balances and the two ends must agree; a broken ledger is not a statement.
    assert opening + total_in - total_out == closing, "a statement adds up"
    assert not lines or lines[-1].balance_after == closing, "the last entry ends the statement"
    return Statement(account_id, currency, start, end, opening, closing, total_in, total_out, lines)


async def command_outcome(
    conn: asyncpg.Connection | asyncpg.Pool, flow: Flow, command_id: UUID
) -> CommandOutcome | None:
    """The recorded outcome of a command, or None while it is unknown (not consumed yet, or
    answered without a record: unauthorized, invalid, hold or payment not found)."""
    row = await conn.fetchrow(SELECT_COMMAND, flow.name, command_id)
    if row is None:
        return None
    return CommandOutcome(
        row["flow"],
        row["outcome"],
        row["subject"],
        row["result_topic"],
        bytes(row["result_payload"]),
    )


def statement_csv(statement: Statement) -> str:
    """The statement as CSV: an `opening` row, an `entry` row per entry, a `closing` row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerow(
        ["opening", statement.start.isoformat(), "", "", "", "", "", statement.opening_balance]
    )
    for line in statement.lines:
        writer.writerow(
            [
                "entry",
                line.created_at.isoformat(),
                line.journal_entry_id,
                line.type,
                line.id,
                line.amount,
                line.counterparty_account_id or "",
                line.balance_after,
            ]
        )
    net = statement.total_in - statement.total_out
    writer.writerow(
        ["closing", statement.end.isoformat(), "", "", "", net, "", statement.closing_balance]
    )
    return out.getvalue()
