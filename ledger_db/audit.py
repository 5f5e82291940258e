"""Whole-database invariant checks behind `ledgerflow audit`.

Each check is one SQL query returning the violating rows (empty = holds), so the audit reads
the ledger the same way whatever wrote it, and a superuser's tampering shows up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
            -- The day the debit counted toward, recorded with the entry; entries written before
            -- it was recorded (migration 0004) counted toward their transaction's start day.
            SELECT p.account_id,
                   coalesce(e.out_day, (e.created_at AT TIME ZONE 'UTC')::date) AS day,
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
    "entries_match_results": (
        "every journal entry posts what its recorded result says: accounts, amount and fee",
        # The postings each completed result implies (ledger_db/rules.py), compared as sorted
        # lists with the entry's: a wrong amount, a wrong wallet or a fee posted to another
        # house account than fee revenue all differ.
        """
        WITH r AS (
            SELECT r.flow, r.key, r.journal_entry_id,
                   convert_from(r.result_payload, 'UTF8')::jsonb -> 'data' AS d
            FROM idempotency_records r
            WHERE r.outcome = 'completed' AND r.flow <> 'onboarding'
        ),
        implied AS (
            SELECT flow, key, (d ->> 'from_account_id')::uuid AS account_id,
                   -(d ->> 'amount')::numeric AS amount
            FROM r WHERE flow = 'transfer'
            UNION ALL
            SELECT flow, key, (d ->> 'to_account_id')::uuid, (d ->> 'amount')::numeric
            FROM r WHERE flow = 'transfer'
            UNION ALL
            SELECT flow, key, (d ->> 'wallet_account_id')::uuid, (d ->> 'amount')::numeric
            FROM r WHERE flow = 'cashin'
            UNION ALL
            SELECT r.flow, r.key, h.id, -(r.d ->> 'amount')::numeric
            FROM r JOIN accounts h ON h.kind = 'cashin_clearing' AND h.currency = r.d ->> 'currency'
            WHERE r.flow = 'cashin'
            UNION ALL
            SELECT flow, key, (d ->> 'wallet_account_id')::uuid,
                   -((d ->> 'amount')::numeric + coalesce((d ->> 'fee')::numeric, 0))
            FROM r WHERE flow = 'cashout'
            UNION ALL
            SELECT r.flow, r.key, h.id, (r.d ->> 'amount')::numeric
            FROM r JOIN accounts h
              ON h.kind = 'cashout_clearing' AND h.currency = r.d ->> 'currency'
            WHERE r.flow = 'cashout'
            UNION ALL
            SELECT r.flow, r.key, h.id, (r.d ->> 'fee')::numeric
            FROM r JOIN accounts h ON h.kind = 'fee_revenue' AND h.currency = r.d ->> 'currency'
            WHERE r.flow = 'cashout' AND (r.d ->> 'fee')::numeric > 0
        ),
        i AS (
            SELECT flow, key, string_agg(account_id || ':' || amount, ' '
                                         ORDER BY account_id, amount) AS postings
            FROM implied GROUP BY flow, key
        ),
        p AS (
            SELECT r.flow, r.key, string_agg(q.account_id || ':' || q.amount::numeric, ' '
                                             ORDER BY q.account_id, q.amount) AS postings,
                   bool_or(q.currency <> r.d ->> 'currency') AS other_currency
            FROM r JOIN postings q ON q.entry_id = r.journal_entry_id
            GROUP BY r.flow, r.key
        )
        SELECT r.flow, r.key::text AS key, r.journal_entry_id::text AS entry_id,
               i.postings AS result_implies, p.postings AS posted
        FROM r LEFT JOIN i USING (flow, key) LEFT JOIN p USING (flow, key)
        WHERE i.postings IS DISTINCT FROM p.postings
           OR coalesce(p.other_currency, false)
           OR r.d ->> 'journal_entry_id' IS DISTINCT FROM r.journal_entry_id::text
           OR r.d ->> (r.flow || '_id') IS DISTINCT FROM r.key::text
        """,
    ),
    "outgoing_totals_within_limits": (
        "every wallet's outgoing totals are within its tier's limits, or a tier change explains it",
        # The bound of a day (month) is the largest limit among the tiers in effect during it:
        # the tier it began with (the old tier of the first change since, else today's) and each
        # tier it was changed to (customer_tier_changes). A tier without a limits row allows
        # nothing (ledger_db/rules.py fails closed); a NULL limit is unbounded. Limits come from
        # the tier_limits table, as the workers load them.
        """
        WITH w AS (
            SELECT b.account_id, a.currency, a.customer_id, c.tier, b.out_day,
                   b.out_day_total, b.out_month, b.out_month_total
            FROM balances b
            JOIN accounts a ON a.id = b.account_id
            JOIN customers c ON c.id = a.customer_id
            WHERE b.kind = 'wallet' AND b.out_day IS NOT NULL
        ),
        period AS (
            SELECT account_id, currency, customer_id, tier, 'day' AS period,
                   out_day::timestamp AT TIME ZONE 'UTC' AS starts,
                   (out_day + 1)::timestamp AT TIME ZONE 'UTC' AS ends,
                   out_day_total AS total
            FROM w
            UNION ALL
            SELECT account_id, currency, customer_id, tier, 'month',
                   out_month::timestamp AT TIME ZONE 'UTC',
                   (out_month + interval '1 month') AT TIME ZONE 'UTC',
                   out_month_total
            FROM w
        ),
        in_effect AS (
            SELECT p.account_id, p.period, p.total, p.currency, t.tier
            FROM period p CROSS JOIN LATERAL (
                SELECT coalesce(
                    (SELECT ch.old_tier FROM customer_tier_changes ch
                     WHERE ch.customer_id = p.customer_id AND ch.changed_at >= p.starts
                     ORDER BY ch.changed_at, ch.id LIMIT 1),
                    p.tier)
                UNION
                SELECT ch.new_tier FROM customer_tier_changes ch
                WHERE ch.customer_id = p.customer_id
                  AND ch.changed_at >= p.starts AND ch.changed_at < p.ends
            ) AS t(tier)
        ),
        bound AS (
            SELECT e.account_id, e.period, e.total,
                   coalesce(bool_or(l.found AND l.bound IS NULL), false) AS unbounded,
                   max(coalesce(l.bound, 0)) AS bound,
                   string_agg(DISTINCT e.tier, ',') AS tiers
            FROM in_effect e
            LEFT JOIN LATERAL (
                SELECT true AS found,
                       CASE e.period WHEN 'day' THEN x.daily_out_max
                                     ELSE x.monthly_out_max END AS bound
                FROM tier_limits x
                WHERE x.tier = e.tier AND x.currency IN (e.currency, '*')
                ORDER BY x.currency = '*'
                LIMIT 1
            ) AS l ON true
            GROUP BY e.account_id, e.period, e.total
        )
        SELECT account_id::text AS account_id, period, total, bound, tiers
        FROM bound WHERE NOT unbounded AND total > bound
        """,
    ),
    "records_keep_their_results": (
        "every recorded outcome keeps its result event: topic, id and payload, which agree",
        # The outbox is pruned after its retention period; the record is where a result lives.
        """
        WITH r AS (
            SELECT flow, key, outcome, result_topic, result_event_id,
                   CASE WHEN length(result_payload) > 0
                        THEN convert_from(result_payload, 'UTF8')::jsonb END AS event
            FROM idempotency_records
        )
        SELECT flow, key::text AS key, result_event_id::text AS event_id FROM r
        WHERE event IS NULL
           OR event ->> 'id' IS DISTINCT FROM result_event_id::text
           OR event ->> 'type' IS DISTINCT FROM flow || '.' || outcome
           OR right(result_topic, length(event ->> 'type')) <> event ->> 'type'
        """,
    ),
    "outbox_rows_match_records": (
        "every result event still in the outbox is its record's, and every completion has one",
        (
            "SELECT o.id, o.event_id::text AS event_id, o.topic FROM outbox o "
            "LEFT JOIN idempotency_records r ON r.result_event_id = o.event_id "
            "WHERE (r.key IS NULL AND o.topic LIKE '%.completed') "
            "OR o.topic <> r.result_topic OR o.payload <> r.result_payload"
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
            try:
                # A savepoint each: a value the check cannot read (a payload that is not UTF-8
                # JSON, after tampering) fails that check, and the others still run.
                async with conn.transaction():
                    rows = await conn.fetch(query)
            except asyncpg.DataError as error:
                results.append(
                    CheckResult(name, description, 1, [{"unreadable": type(error).__name__}])
                )
                continue
            examples = [
                {k: (v if isinstance(v, int | str | None) else str(v)) for k, v in row.items()}
                for row in rows[:VIOLATIONS_SHOWN_MAX]
            ]
            results.append(CheckResult(name, description, len(rows), examples))
    return results
