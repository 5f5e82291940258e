"""Whole-database invariant checks behind `ledgerflow audit`.

Each check is one SQL query returning the violating rows (empty = holds), so the audit reads
the ledger the same way whatever wrote it, and a superuser's tampering shows up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

VIOLATIONS_SHOWN_MAX = 20

CHECKS: dict[str, tuple[str, str]] = {
    "balances_equal_postings": (
        "every account's balance equals the sum of its postings",
        """
        WITH b AS (SELECT account_id, sum(balance) AS balance FROM balances GROUP BY account_id),
             p AS (SELECT account_id, sum(amount) AS total FROM postings GROUP BY account_id)
        SELECT b.account_id::text AS account_id, b.balance, coalesce(p.total, 0) AS postings
        FROM b LEFT JOIN p USING (account_id)
        WHERE b.balance <> coalesce(p.total, 0)
        UNION ALL
        SELECT p.account_id::text, NULL, p.total FROM p
        WHERE NOT EXISTS (SELECT 1 FROM balances x WHERE x.account_id = p.account_id)
        """,
    ),
    "currency_totals_zero": (
        "postings of each currency sum to zero",
        (
            "SELECT currency, sum(amount) AS total FROM postings GROUP BY currency "
            "HAVING sum(amount) <> 0"
        ),
    ),
    "entries_balanced": (
        "every journal entry has two or more postings summing to zero per currency",
        """
        SELECT e.id::text AS entry_id, count(p.seq) AS postings
        FROM journal_entries e LEFT JOIN postings p ON p.entry_id = e.id
        GROUP BY e.id
        HAVING count(p.seq) < 2 OR EXISTS (
            SELECT 1 FROM postings q WHERE q.entry_id = e.id
            GROUP BY q.currency HAVING sum(q.amount) <> 0)
        """,
    ),
    "no_negative_wallet": (
        "no wallet balance is below zero",
        (
            "SELECT account_id::text AS account_id, balance FROM balances "
            "WHERE kind = 'wallet' AND balance < 0"
        ),
    ),
    "postings_currency_matches_account": (
        "every posting is in its account's currency",
        (
            "SELECT p.entry_id::text AS entry_id, p.seq FROM postings p "
            "JOIN accounts a ON a.id = p.account_id WHERE a.currency <> p.currency"
        ),
    ),
    "entries_have_records": (
        "every journal entry was recorded against its command's key",
        (
            "SELECT e.id::text AS entry_id FROM journal_entries e LEFT JOIN idempotency_records r "
            "ON r.flow = e.flow AND r.key = e.idempotency_key "
            "WHERE r.key IS NULL OR r.journal_entry_id IS DISTINCT FROM e.id"
        ),
    ),
    "records_have_outcomes": (
        "every completed money command has its journal entry",
        (
            "SELECT r.flow, r.key::text AS key FROM idempotency_records r "
            "WHERE r.outcome = 'completed' AND r.flow <> 'onboarding' AND NOT EXISTS "
            "(SELECT 1 FROM journal_entries e WHERE e.id = r.journal_entry_id)"
        ),
    ),
    "outgoing_totals_match_debits": (
        "every wallet's outgoing totals for the daily/monthly limits equal its journal debits",
        """
        WITH d AS (
            SELECT p.account_id, (e.created_at AT TIME ZONE 'UTC')::date AS day,
                   -p.amount AS amount
            FROM postings p
            JOIN journal_entries e ON e.id = p.entry_id
            JOIN balances w ON w.account_id = p.account_id AND w.kind = 'wallet'
            WHERE p.amount < 0
        ),
        last AS (SELECT account_id, max(day) AS day FROM d GROUP BY account_id),
        t AS (
            SELECT l.account_id, l.day,
                   sum(d.amount) FILTER (WHERE d.day = l.day) AS day_total,
                   sum(d.amount) FILTER (
                       WHERE date_trunc('month', d.day) = date_trunc('month', l.day)
                   ) AS month_total
            FROM last l JOIN d USING (account_id)
            GROUP BY l.account_id, l.day
        )
        SELECT b.account_id::text AS account_id, b.out_day::text AS day,
               b.out_day_total AS outgoing_day, coalesce(t.day_total, 0)::bigint AS debits_day,
               b.out_month_total AS outgoing_month,
               coalesce(t.month_total, 0)::bigint AS debits_month
        FROM balances b LEFT JOIN t USING (account_id)
        WHERE b.kind = 'wallet' AND (
            b.out_day IS DISTINCT FROM t.day
            OR b.out_day_total <> coalesce(t.day_total, 0)
            OR b.out_month_total <> coalesce(t.month_total, 0))
        """,
    ),
    "records_have_outbox_rows": (
        "every recorded outcome has its result event in the outbox",
        (
            "SELECT r.flow, r.key::text AS key FROM idempotency_records r "
            "WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = r.result_event_id)"
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    description: str
    violations: int
    examples: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.violations == 0


async def run_audit(conn: asyncpg.Connection) -> list[CheckResult]:
    """Run every check in one repeatable-read snapshot, so they agree with each other."""
    results: list[CheckResult] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for name, (description, query) in CHECKS.items():
            rows = await conn.fetch(query)
            examples = [
                {k: (v if isinstance(v, int | str | None) else str(v)) for k, v in row.items()}
                for row in rows[:VIOLATIONS_SHOWN_MAX]
            ]
            results.append(CheckResult(name, description, len(rows), examples))
    return results
